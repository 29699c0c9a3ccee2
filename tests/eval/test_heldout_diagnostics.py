"""Diagnostics read held-out training images only, and score every trial in the same unit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepa_lab.core.strategies import build_training
from jepa_lab.data.datasets import load_dataset
from jepa_lab.eval.diagnostics import prediction_error
from jepa_lab.eval.evaluate import DIAGNOSTIC_IMAGES, diagnostic_subset, diagnostics, probe_subset
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import load


@pytest.mark.parametrize(("n_train", "size"), [(60000, 10000), (60000, None), (512, None)])
def test_the_diagnostic_slice_is_kept_out_of_the_probe(n_train: int, size: int | None) -> None:
    probe, held = probe_subset(n_train, size), diagnostic_subset(n_train)
    assert len(held) == min(DIAGNOSTIC_IMAGES, n_train // 4)
    assert not set(probe.tolist()) & set(held.tolist())
    assert len(probe) == (size or n_train - len(held))


def test_a_probe_subset_keeps_the_images_it_had() -> None:
    # The probe subset is the head of the same permutation as before the slice existed.
    generator = torch.Generator().manual_seed(0)
    before = torch.randperm(60000, generator=generator)[:10000].sort().values
    assert torch.equal(probe_subset(60000, 10000), before)


def test_prediction_error_is_zero_for_the_targets_and_one_for_zero() -> None:
    tokens = torch.randn(3, 16, 8) * 5 + 2
    targets = torch.tensor([[[0, 1], [5, 6]]] * 3)  # (B, T, Nt)
    normalised = torch.nn.functional.layer_norm(tokens, (8,))
    exact = torch.stack([normalised[b, targets[b].flatten()] for b in range(3)]).view(3, 2, 2, 8)
    assert float(prediction_error(exact, tokens, targets)) == pytest.approx(0.0, abs=1e-12)
    zero = float(prediction_error(torch.zeros(3, 2, 2, 8), tokens, targets))
    assert zero == pytest.approx(1.0, rel=1e-3)  # LayerNorm'd rows have unit mean square


@pytest.mark.parametrize("strategy", ["ema", "sigreg"])
def test_the_fixed_measure_ignores_the_loss_a_trial_trained_with(
    smoke_path: Path, strategy: str
) -> None:
    specs = [
        load(ExperimentSpec, smoke_path, [f"strategy.kind={strategy}", *overrides])
        for overrides in (
            ["loss.kind=smooth_l1", "loss.target_norm=true"],
            ["loss.kind=mse", "loss.target_norm=false"],
        )
    ]
    data = load_dataset(specs[0].data)
    model, strategy_module = build_training(specs[0], total_steps=10)  # the same weights for both
    model.eval()
    strategy_module.eval()
    first, second = (
        diagnostics(spec, data, model, strategy_module, torch.device("cpu")) for spec in specs
    )
    assert first["diag/pred_loss"] == second["diag/pred_loss"]
    assert first["diag/train_loss_heldout"] != second["diag/train_loss_heldout"]
    assert first["diag/sigreg_pooled"] == second["diag/sigreg_pooled"]
    assert ("diag/sigreg_regularised" in first) == (strategy == "sigreg")
    # Realised token counts: per image, within the grid; targets and context are disjoint.
    tokens = specs[0].grid ** 2
    assert specs[0].mask.min_context <= first["diag/context_tokens"] < tokens  # type: ignore[union-attr]
    assert 0 < first["diag/target_tokens"] <= tokens - first["diag/context_tokens"]


def test_padding_keeps_more_context_than_truncation(smoke_path: Path) -> None:
    specs = [
        load(ExperimentSpec, smoke_path, [f"mask.context={how}"]) for how in ("truncate", "pad")
    ]
    data = load_dataset(specs[0].data)
    model, strategy = build_training(specs[0], total_steps=10)
    model.eval()
    strategy.eval()
    cut, padded = (diagnostics(s, data, model, strategy, torch.device("cpu")) for s in specs)
    assert padded["diag/context_tokens"] > cut["diag/context_tokens"]
    assert padded["diag/target_tokens"] == cut["diag/target_tokens"]  # the same target draws
