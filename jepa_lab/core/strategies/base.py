"""The interface every collapse-prevention strategy implements.

A strategy decides four things, and nothing else:

- ``target_tokens(images, full)``: the (B, N, K) tokens the predictions are compared with;
- ``loss(loss_pred, full, context, step)``: the total loss and the regulariser's value;
- ``update(step)``: what happens after each optimiser step (the EMA);
- ``metrics(step)``: the strategy's own logged values (the EMA momentum);

and names the encoder evaluation uses (``eval_encoder``). Strategies are small ``nn.Module``s
(their state travels with ``.to``, checkpoints and DDP checksums), so the protocol also names the
part of the module surface the trainer uses. A strategy subclasses ``nn.Module`` and this protocol,
and inherits the defaults below for what it does not do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from typing_extensions import Self

from jepa_lab.core.models import Encoder


class Strategy(Protocol):
    """What the trainer and evaluation ask of a strategy (see the module docstring)."""

    needs_full_pass: bool  # the model encodes the full image with gradient (online targets)
    training: bool

    def target_tokens(self, images: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        """(B, N, K) target tokens of ``images`` (B, C, H, W); ``full`` is the online encoder's
        full-image pass when ``needs_full_pass``, else None."""
        ...

    def loss(
        self, loss_pred: torch.Tensor, full: torch.Tensor | None, context: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(total loss, regulariser or None); by default the prediction loss alone."""
        return loss_pred, None

    def update(self, step: int) -> None:
        """After the optimiser step ``step``; by default nothing."""
        return None

    def metrics(self, step: int) -> dict[str, float]:
        """The strategy's own values logged with the training row of ``step``; by default none."""
        return {}

    def eval_encoder(self, encoder: Encoder) -> nn.Module:
        """The encoder evaluation scores; by default the online ``encoder`` itself."""
        return encoder

    # The nn.Module surface the trainer uses (every strategy is a module).
    def to(self, *args: Any, **kwargs: Any) -> Self: ...
    def train(self, mode: bool = True) -> Self: ...
    def eval(self) -> Self: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def modules(self) -> Iterator[nn.Module]: ...
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any: ...
