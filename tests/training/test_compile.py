"""torch.compile on the CPU: one training step compiled gives the eager step's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepa_lab.core.strategies import build_training
from jepa_lab.data.datasets import load_dataset
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import load
from jepa_lab.training.loop import global_batch, train_step
from jepa_lab.training.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.mark.slow  # the inductor's C++ compile takes tens of seconds on a CPU
@pytest.mark.parametrize("kind", ["ema", "sigreg"])
def test_a_compiled_cpu_step_gives_the_eager_loss_and_weights(smoke_path: Path, kind: str) -> None:
    overrides = ["strategy.kind=sigreg", "strategy.projector=null"] if kind == "sigreg" else []
    spec = load(ExperimentSpec, smoke_path, overrides)
    data = load_dataset(spec.data, None)
    images, masks = global_batch(spec, data, 0, CPU)
    outcomes = []
    for compiled in (False, True):
        model, strategy = build_training(spec, 10)  # the same seed: the same initial weights
        optimizer = build_optimizer(model, spec.optim, fused=False)
        trained = torch.compile(model) if compiled else model
        loss, _, _ = train_step(
            trained, strategy, optimizer, images, masks, spec.loss, 0, None, "fp32"
        )  # type: ignore[arg-type]
        outcomes.append((loss, [p.detach().clone() for p in model.parameters()]))
    (eager, eager_weights), (traced, traced_weights) = outcomes
    assert torch.isfinite(eager)
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(traced_weights, eager_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
