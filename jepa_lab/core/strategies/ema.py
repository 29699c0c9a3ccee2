"""EMA (I-JEPA, Assran et al. 2023, arXiv:2301.08243): targets from an exponential moving average
of the context encoder, which receives no gradient."""

from __future__ import annotations

import copy

import torch
from torch import nn

from jepa_lab.core.models import Encoder
from jepa_lab.core.strategies.base import Strategy
from jepa_lab.spec.experiment import EmaSpec


def momentum_at(spec: EmaSpec, step: int, total_steps: int) -> float:
    """EMA momentum at ``step``: linear from momentum_start to momentum_end over the run."""
    progress = min(step / max(total_steps, 1), 1.0)
    return spec.momentum_start + (spec.momentum_end - spec.momentum_start) * progress


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for every parameter at once."""
    target_params: list[torch.Tensor] = list(target.parameters())
    online_params: list[torch.Tensor] = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


class EmaStrategy(nn.Module, Strategy):
    """I-JEPA: targets from an EMA copy of the context encoder, which receives no gradient."""

    needs_full_pass = False

    def __init__(self, spec: EmaSpec, encoder: Encoder, total_steps: int) -> None:
        super().__init__()
        self.spec = spec
        self.total_steps = total_steps
        self.target = copy.deepcopy(encoder).requires_grad_(False)
        self.online = [encoder]  # a list: a reference, not a registered submodule

    def target_tokens(self, images: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return self.target(images)

    def update(self, step: int) -> None:
        ema_update(self.target, self.online[0], momentum_at(self.spec, step, self.total_steps))

    def metrics(self, step: int) -> dict[str, float]:
        return {"train/momentum": momentum_at(self.spec, step, self.total_steps)}

    def eval_encoder(self, encoder: Encoder) -> nn.Module:
        return self.target
