"""Collapse-prevention strategies behind one narrow interface (:class:`Strategy`).

One file per strategy, each holding its math and its small module: :mod:`.ema` (I-JEPA),
:mod:`.sigreg` (LeJEPA) and :mod:`.none` (the collapse baseline). Adding a strategy touches its
spec class in the union (:mod:`jepa_lab.spec.experiment`), its file here, one ``case`` in
:func:`build_strategy` and its section in ``docs/method.md``.
"""

from __future__ import annotations

from torch import nn

from jepa_lab.core.models import JEPA, Encoder, build_model
from jepa_lab.core.strategies.base import Strategy
from jepa_lab.core.strategies.ema import EmaStrategy
from jepa_lab.core.strategies.none import NoneStrategy
from jepa_lab.core.strategies.sigreg import AllReduce, SigregStrategy
from jepa_lab.spec.experiment import EmaSpec, ExperimentSpec, NoneSpec, SigregSpec, StrategySpec

__all__ = ["Strategy", "build_strategy", "build_training"]


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
