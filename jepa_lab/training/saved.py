"""Evaluating a saved run again: its checkpoint's weights through the same evaluation as
training ends with (for notebooks, and for evaluation settings changed after training)."""

from __future__ import annotations

from pathlib import Path

from jepa_lab.core.strategies import build_training
from jepa_lab.data.datasets import load_dataset
from jepa_lab.eval.deploy import DeployReport, deploy, resolve_backend
from jepa_lab.eval.evaluate import Progress, evaluate
from jepa_lab.spec.experiment import DeploySpec, ExperimentSpec
from jepa_lab.training.checkpoint import load_weights
from jepa_lab.training.distributed import pick_device
from jepa_lab.training.loop import nothing


def evaluate_checkpoint(
    spec: ExperimentSpec,
    checkpoint: Path,
    *,
    data_dir: Path | None = None,
    device: str | None = None,
    progress: Progress = nothing,
) -> dict[str, float]:
    """The ``eval/*`` and ``diag/*`` metrics of the weights in ``checkpoint``, written by a run of
    ``spec`` (the same spec: its digest is checked)."""
    where = pick_device(device)
    data = load_dataset(spec.data, data_dir).to(where)
    total = spec.optim.total_steps(len(data.train_labels))
    model, strategy = build_training(spec, total)
    load_weights(checkpoint, spec, model, strategy)
    model, strategy = model.to(where), strategy.to(where)
    return evaluate(spec, data, model, strategy, where, progress)


def deploy_checkpoint(
    spec: ExperimentSpec,
    checkpoint: Path,
    settings: DeploySpec,
    *,
    data_dir: Path | None = None,
    device: str | None = None,
) -> DeployReport:
    """The ``deploy/*`` measurement (:func:`jepa_lab.eval.deploy.deploy`) of the evaluation
    encoder saved at ``checkpoint`` by a run of ``spec``, with ``settings``."""
    where = pick_device(device)
    resolve_backend(settings.backend, where.type)  # before loading anything
    data = load_dataset(spec.data, data_dir).to(where)
    total = spec.optim.total_steps(len(data.train_labels))
    model, strategy = build_training(spec, total)
    load_weights(checkpoint, spec, model, strategy)
    model, strategy = model.to(where).eval(), strategy.to(where).eval()
    return deploy(spec, settings, data, strategy.eval_encoder(model.encoder), where)
