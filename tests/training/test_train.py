"""The shared trainer: every strategy learns a little, resumes exactly, fails loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa_lab.core.strategies import build_strategy, build_training
from jepa_lab.data.datasets import load_dataset
from jepa_lab.spec.experiment import PATCH_INITS, ExperimentSpec
from jepa_lab.spec.load import load
from jepa_lab.training.checkpoint import CheckpointError, read_checkpoint
from jepa_lab.training.loop import TrainingError, TrainOptions, global_batch, train, train_step
from jepa_lab.training.optim import build_optimizer, lr_at, weight_decay_at

STRATEGIES = {
    "ema": ["strategy.momentum_end=1.0"],  # a ramp (the default holds 0.99), so it must be logged
    "sigreg": ["strategy.kind=sigreg", "strategy.projector=null"],
    "sigreg_projector": ["strategy.kind=sigreg", "strategy.projector=32"],
    "none": ["strategy.kind=none"],
}
FAST = ["optim.steps=30", "log_every=10", "eval.baselines=false"]


def smoke(path: Path, *overrides: str) -> ExperimentSpec:
    return load(ExperimentSpec, path, [*FAST, *overrides])


@pytest.mark.parametrize("kind", STRATEGIES)
def test_each_strategy_trains_with_a_finite_falling_loss(smoke_path: Path, kind: str) -> None:
    spec = smoke(smoke_path, *STRATEGIES[kind], "optim.warmup=0.0")
    logged: list[tuple[dict, int]] = []
    result = train(spec, log=lambda m, s: logged.append((dict(m), s)))
    losses = [row["train/loss"] for row in result.history]  # what each strategy minimises
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert [step for _, step in logged] == [10, 20, 30, 30]
    metrics = result.metrics
    assert {"eval/probe_acc", "eval/knn_acc", "diag/rankme", "diag/std", "diag/sigreg_pooled",
            "diag/pred_loss", "diag/train_loss_heldout", "diag/positional_share",
            "diag/context_tokens", "diag/target_tokens",
            "eval/probe_val_acc_ci"} <= set(metrics)  # fmt: skip
    assert ("diag/sigreg_regularised" in metrics) == kind.startswith("sigreg")
    if kind.startswith("sigreg"):
        assert all(row["train/loss_reg"] > 0 for row in result.history)
    if kind == "ema":
        assert result.history[-1]["train/momentum"] > result.history[0]["train/momentum"]


def test_resumed_run_ends_with_the_same_weights(smoke_path: Path, tmp_path: Path) -> None:
    spec = smoke(smoke_path, "strategy.kind=ema", "eval.probe_train=64", "eval.every=5")
    whole = tmp_path / "whole"
    uninterrupted = train(spec, options=TrainOptions(run_dir=whole, device="cpu"))
    parts = tmp_path / "parts"
    partial = train(spec, options=TrainOptions(run_dir=parts, device="cpu", stop_at=13))
    assert not partial.completed and read_checkpoint(parts / "checkpoint.pt")["step"] == 13
    resumed = train(spec, options=TrainOptions(run_dir=parts, device="cpu", resume=True))
    # The resumed run's result holds what was logged before the interruption too: every log
    # row (the interruption at step 13 logs none) and the whole probe curve.
    steps = [row["step"] for row in uninterrupted.history]
    assert [row["step"] for row in resumed.history] == steps
    assert len(resumed.curve) > 2 and resumed.curve == uninterrupted.curve
    a, b = read_checkpoint(whole / "checkpoint.pt"), read_checkpoint(parts / "checkpoint.pt")
    for key in ("model", "strategy"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"


@pytest.mark.parametrize("kind", ["ema", "sigreg"])
def test_a_resumed_run_logs_the_history_of_an_uninterrupted_one(
    smoke_path: Path, tmp_path: Path, kind: str
) -> None:
    """Interrupted twice between log steps (13 and 22, log_every 5), the resumed run's rows
    equal the whole run's: the open window's loss sums travel in the checkpoint, and an
    interruption adds no row. Only throughput (timing) differs."""
    spec = smoke(smoke_path, *STRATEGIES[kind], "log_every=5")
    whole = train(spec, options=TrainOptions(run_dir=tmp_path / "whole", device="cpu"))
    parts = tmp_path / "parts"
    train(spec, options=TrainOptions(run_dir=parts, device="cpu", stop_at=13))
    assert read_checkpoint(parts / "checkpoint.pt")["records"]["window"][3] == 3.0
    train(spec, options=TrainOptions(run_dir=parts, device="cpu", resume=True, stop_at=22))
    resumed = train(spec, options=TrainOptions(run_dir=parts, device="cpu", resume=True))

    def timeless(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [
            {key: value for key, value in row.items() if key != "train/images_per_second"}
            for row in history
        ]

    assert len(whole.history) == 6
    assert timeless(resumed.history) == timeless(whole.history)


def test_resume_refuses_another_spec(smoke_path: Path, tmp_path: Path) -> None:
    train(smoke(smoke_path, "optim.steps=2"), options=TrainOptions(run_dir=tmp_path, stop_at=1))
    with pytest.raises(CheckpointError, match="another spec"):
        train(
            smoke(smoke_path, "optim.steps=3"), options=TrainOptions(run_dir=tmp_path, resume=True)
        )


def test_non_finite_loss_names_the_first_bad_step(
    smoke_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jepa_lab.training.loop as trainer

    real = trainer.jepa_losses

    def diverging(*args, **kwargs):  # type: ignore[no-untyped-def]
        losses = real(*args, **kwargs)
        step = args[-1]
        if step >= 7:
            return type(losses)(losses.total * float("nan"), losses.prediction, None)
        return losses

    monkeypatch.setattr(trainer, "jepa_losses", diverging)
    with pytest.raises(TrainingError, match=r"non-finite at step 7\b"):
        train(smoke(smoke_path, "log_every=30"))


def test_schedules_are_pure_functions_of_the_step(smoke_path: Path) -> None:
    optim = smoke(smoke_path, "optim.steps=100", "optim.warmup=0.1").optim
    assert lr_at(optim, 0, 100) == optim.lr_start
    assert lr_at(optim, 10, 100) == pytest.approx(optim.lr)
    assert lr_at(optim, 100, 100) == pytest.approx(optim.lr_end)
    assert weight_decay_at(optim, 0, 100) == pytest.approx(optim.weight_decay_start)
    assert weight_decay_at(optim, 100, 100) == pytest.approx(optim.weight_decay_end)


def test_core_imports_no_orchestration_library() -> None:
    code = (
        "import sys, jepa_lab.training.loop, jepa_lab.eval.evaluate, jepa_lab.spec.load\n"
        "import jepa_lab.spec.study, jepa_lab.spec.plan\n"
        "bad = [m for m in ('mlflow', 'optuna', 'typer', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_probe_beats_chance_on_the_synthetic_set(smoke_path: Path) -> None:
    """Chance is 1/4 here; 256 test images put 3 binomial std at ~8 points above it."""
    result = train(smoke(smoke_path, "eval.baselines=true", "eval.every=10"))
    metrics = result.metrics
    chance, margin = 0.25, 3 * (0.25 * 0.75 / 256) ** 0.5
    assert metrics["eval/pixel_probe_acc"] > chance + margin
    assert metrics["eval/random_probe_acc"] > chance
    assert metrics["eval/probe_acc"] > chance
    # A random-init encoder for every initialisation; the bar is the strongest of them, chosen
    # on validation (tests/eval/test_baselines.py) and reported with its test accuracy.
    val = {init: metrics[f"eval/random_{init}_probe_val_acc"] for init in PATCH_INITS}
    chosen = max(PATCH_INITS, key=val.__getitem__)
    assert len(val) == 2
    assert metrics["eval/random_probe_acc"] == metrics[f"eval/random_{chosen}_probe_acc"]
    assert metrics["eval/gain_over_random"] == pytest.approx(
        metrics["eval/probe_acc"] - metrics["eval/random_probe_acc"]
    )
    # The probe curve: before training (the spec's own random init), every 10 steps, the end.
    assert [c["step"] for c in result.curve] == [0, 10, 20, 30]
    spec_init = f"eval/random_{result.spec.model.patch_init}_probe_acc"
    assert result.curve[0]["curve/probe_acc"] == metrics[spec_init]
    assert result.curve[-1]["curve/probe_acc"] == metrics["eval/probe_acc"]
    # The per-image test predictions of the encoder and both baselines survive in the result.
    from jepa_lab.eval.probe import decode_classes

    labels = decode_classes(result.predictions["pred/labels"])
    for key, metric in [
        ("pred/probe", "eval/probe_acc"),
        ("pred/random_probe", "eval/random_probe_acc"),
        ("pred/pixel_probe", "eval/pixel_probe_acc"),
    ]:
        correct = decode_classes(result.predictions[key]) == labels
        assert metrics[metric] == pytest.approx(float(correct.double().mean()))
    assert result.to_dict()["predictions"] == result.predictions


def test_a_callers_cpu_autocast_reaches_the_training_step(smoke_path: Path) -> None:
    # train_step autocasts on CUDA only; on the CPU it must not switch a caller's autocast off
    # (the benchmark's --dtype bf16 on CPU relies on it).

    spec = smoke(smoke_path)
    data = load_dataset(spec.data, None)
    model, strategy = build_training(spec, 1)
    optimizer = build_optimizer(model, spec.optim, fused=False)
    dtypes: list[torch.dtype] = []
    model.encoder.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, out: dtypes.append(out.dtype)
    )
    images, masks = global_batch(spec, data, 0, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = train_step(model, strategy, optimizer, images, masks, spec.loss, 0, None)
    assert dtypes == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_sigreg_projector_is_trained_and_leaves_the_encoder_init_alone(smoke_path: Path) -> None:

    plain, _ = build_training(
        smoke(smoke_path, "strategy.kind=sigreg", "strategy.projector=null"), 1
    )
    spec = smoke(smoke_path, "strategy.kind=sigreg", "strategy.projector=32")
    model, strategy = build_training(spec, 1)
    # The head is drawn after the encoder and predictor: their initial weights do not change.
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    assert model.projector is not None
    head = [p.detach().clone() for p in model.projector.parameters()]
    images, masks = global_batch(spec, load_dataset(spec.data, None), 0, torch.device("cpu"))
    optimizer = build_optimizer(model, spec.optim, fused=False)
    train_step(model, strategy, optimizer, images, masks, spec.loss, 0, None)
    moved = [not torch.equal(a, b) for a, b in zip(head, model.projector.parameters(), strict=True)]
    assert all(moved), "SIGReg's gradient must reach every parameter of the projector head"
    # A strategy whose spec wants a head must be given the model's head, and the reverse.
    with pytest.raises(ValueError, match="projector"):
        build_strategy(spec.strategy, model.encoder, 1)
