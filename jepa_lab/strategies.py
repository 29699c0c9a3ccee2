"""Collapse-prevention strategies behind one narrow interface.

Each strategy decides three things, and nothing else:

- ``target_tokens(images, full)``: the (B, N, K) tokens predictions are compared with;
- ``loss(loss_pred, full, context, step)``: the total loss and the regulariser's value;
- ``update(step)``: what happens after each optimiser step (the EMA).

and names the encoder evaluation uses (``eval_encoder``). Adding a strategy means a spec class in
the union, a module here and one ``case`` in :func:`build_strategy`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from jepa_lab.losses import AllReduce, sigreg, sigreg_directions
from jepa_lab.models import JEPA, Encoder, build_model
from jepa_lab.spec import EmaSpec, ExperimentSpec, NoneSpec, SigregSpec, StrategySpec


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


class EmaStrategy(nn.Module):
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

    def loss(
        self, loss_pred: torch.Tensor, full: torch.Tensor | None, context: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return loss_pred, None

    def update(self, step: int) -> None:
        ema_update(self.target, self.online[0], momentum_at(self.spec, step, self.total_steps))

    def eval_encoder(self, encoder: Encoder) -> nn.Module:
        return self.target


class SigregStrategy(nn.Module):
    """LeJEPA: targets from the online encoder's full-image pass, SIGReg keeps it from collapse.

    ``loss = (1 - lambda) * prediction + lambda * SIGReg``. Under DDP, pass the autograd-aware
    all-reduce and the world size so SIGReg is the statistic of the global batch.
    """

    needs_full_pass = True

    def __init__(
        self,
        spec: SigregSpec,
        all_reduce_mean: AllReduce | None = None,
        world_size: int = 1,
        projector: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if (spec.projector is None) != (projector is None):
            raise ValueError(
                "strategy.projector and the model's projector head disagree: build the model "
                "with build_model(..., projector=spec.strategy.projector) and pass its projector"
            )
        self.spec = spec
        self.all_reduce_mean = all_reduce_mean
        self.world_size = world_size
        # A reference in a list, not a registered submodule: the model owns the head.
        self.projector = [projector] if projector is not None else []

    def target_tokens(self, images: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        assert full is not None
        return full.detach() if self.spec.stop_gradient else full

    def regularised(self, full: torch.Tensor | None, context: torch.Tensor) -> torch.Tensor:
        """The (n, K) embeddings SIGReg sees: pooled per image, or every token."""
        source, how = self.spec.embeddings.split("_")
        tokens = full if source == "target" else context
        assert tokens is not None
        z = tokens.mean(1) if how == "pooled" else tokens.flatten(0, 1)
        return self.projector[0](z) if self.projector else z

    def loss(
        self, loss_pred: torch.Tensor, full: torch.Tensor | None, context: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.regularised(full, context)
        directions = sigreg_directions(z.shape[-1], self.spec.directions, step)
        # Only training is distributed: evaluation runs on rank 0 alone, over its own batch.
        reduce, world = (self.all_reduce_mean, self.world_size) if self.training else (None, 1)
        reg = sigreg(z, directions, self.spec.knots, self.spec.t_max, reduce, world)
        lam = self.spec.lambda_
        return (1 - lam) * loss_pred + lam * reg, reg

    def update(self, step: int) -> None:
        return None

    def eval_encoder(self, encoder: Encoder) -> nn.Module:
        return encoder


class NoneStrategy(nn.Module):
    """No collapse prevention: the online encoder is its own target (the collapse baseline)."""

    needs_full_pass = True

    def __init__(self, spec: NoneSpec) -> None:
        super().__init__()
        self.spec = spec

    def target_tokens(self, images: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        assert full is not None
        return full.detach() if self.spec.stop_gradient else full

    def loss(
        self, loss_pred: torch.Tensor, full: torch.Tensor | None, context: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return loss_pred, None

    def update(self, step: int) -> None:
        return None

    def eval_encoder(self, encoder: Encoder) -> nn.Module:
        return encoder


Strategy = EmaStrategy | SigregStrategy | NoneStrategy


def build_strategy(
    spec: StrategySpec,
    encoder: Encoder,
    total_steps: int,
    all_reduce_mean: AllReduce | None = None,
    world_size: int = 1,
    projector: nn.Module | None = None,
) -> Strategy:
    """The strategy module for ``spec``; ``encoder`` is the (unwrapped) context encoder and
    ``projector`` the model's projector head (SIGReg with ``projector`` set)."""
    match spec:
        case EmaSpec():
            return EmaStrategy(spec, encoder, total_steps)
        case SigregSpec():
            return SigregStrategy(spec, all_reduce_mean, world_size, projector)
        case NoneSpec():
            return NoneStrategy(spec)
    raise TypeError(f"unknown strategy spec {type(spec).__name__}")


def build_training(
    spec: ExperimentSpec,
    total_steps: int,
    all_reduce_mean: AllReduce | None = None,
    world_size: int = 1,
) -> tuple[JEPA, Strategy]:
    """The freshly initialised model of ``spec`` and its strategy (on the CPU), wired together:
    the strategy sees the model's encoder (EMA) or projector head (SIGReg with a projector)."""
    projector = spec.strategy.projector if isinstance(spec.strategy, SigregSpec) else None
    data, seed = spec.data, spec.seed
    model = build_model(spec.model, data.image_size, data.channels, seed, projector)
    strategy = build_strategy(
        spec.strategy, model.encoder, total_steps, all_reduce_mean, world_size, model.projector
    )
    return model, strategy
