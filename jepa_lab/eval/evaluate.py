"""Evaluation of a trained JEPA: probe, kNN, baselines and collapse diagnostics.

Every encoder (trained, random-init, raw pixels) goes through the same features -> probe
procedure, on the same fixed probe subset (independent of the run seed, so runs are compared on
identical images). Baselines that do not depend on trained weights are cached on disk and reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from jepa_lab.core.masks import sample_masks
from jepa_lab.core.models import JEPA, build_model
from jepa_lab.core.objective import jepa_losses, normalise_targets
from jepa_lab.core.strategies import Strategy
from jepa_lab.data.datasets import Dataset, normalise
from jepa_lab.eval.diagnostics import mean_std, positional_share, rankme, sigreg_statistic
from jepa_lab.eval.probe import fit_probe, knn_accuracy, pooled_features
from jepa_lab.spec.experiment import PATCH_INITS, ExperimentSpec, ModelSpec

Progress = Callable[[str, int, int], None]
Features = tuple[torch.Tensor, torch.Tensor]  # (train (n, D), test (m, D))

PROBE_SEED = 0  # the probe subset and its validation split are the same for every run
# Bumped whenever the probe procedure changes what it returns, so cached baselines are refitted.
# 2: the validation split is drawn by image index (the same images for every encoder).
PROBE_VERSION = 2
HELD_OUT = 1024  # test images scored for held-out prediction loss and positional share


def cache_dir() -> Path:
    root = os.environ.get("JEPA_LAB_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(root) if root else Path.home() / ".cache") / "jepa-lab"


def probe_subset(n_train: int, size: int | None) -> torch.Tensor:
    """Indices of the training images the probe is fitted on (fixed, seeded)."""
    if size is None or size >= n_train:
        return torch.arange(n_train)
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randperm(n_train, generator=generator)[:size].sort().values


def _features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    spec: ExperimentSpec,
    data: Dataset,
    device: torch.device,
) -> Features:
    def prepare(images: torch.Tensor) -> torch.Tensor:
        return normalise(images, data.mean, data.std)

    index = probe_subset(len(data.train_labels), spec.eval.probe_train).to(data.train_images.device)
    size = spec.eval.batch_size
    train = pooled_features(encode, prepare, data.train_images[index], size, device)
    test = pooled_features(encode, prepare, data.test_images, size, device)
    return train, test


def _scores(prefix: str, features: Features, spec: ExperimentSpec, data: Dataset) -> dict:
    index = probe_subset(len(data.train_labels), spec.eval.probe_train)
    train_y, test_y = data.train_labels.cpu()[index], data.test_labels.cpu()
    probe = fit_probe(features[0], train_y, features[1], test_y, spec.eval, PROBE_SEED, index)
    knn = knn_accuracy(
        features[0], train_y, features[1], test_y, spec.eval.knn_k, spec.data.n_classes
    )
    return {
        f"eval/{prefix}probe_acc": probe.test_acc,
        f"eval/{prefix}probe_val_acc": probe.val_acc,
        f"eval/{prefix}probe_l2": probe.l2,
        f"eval/{prefix}knn_acc": knn,
    }


def _cached(key: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``, remembered on disk under a hash of ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "baselines" / f"{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(values))
    os.replace(partial, path)
    return values


def baselines(spec: ExperimentSpec, data: Dataset, device: torch.device) -> dict[str, float]:
    """Probe and kNN on raw pixels and on random-init encoders of the same shape and seed.

    A random-init encoder is scored for every initialisation the framework offers
    (``eval/random_<init>_*``); ``eval/random_*`` repeats the strongest of them, so a weak
    initialisation can never make the bar a trained encoder must clear lower. The strongest is
    chosen on the probe's *validation* accuracy (ties: the first in PATCH_INITS) and reported with
    its test accuracy: choosing on test would raise the bar by test-sampling luck.
    """
    data_key = {
        "probe": PROBE_VERSION,
        "digest": data.digest,
        "data": spec.data.model_dump(mode="json", exclude={"augment"}),
        "eval": spec.eval.model_dump(mode="json", exclude={"deploy"}),
    }

    def pixels() -> dict:
        return _scores("pixel_", _features(lambda x: x.flatten(1)[:, None], spec, data, device),
                       spec, data)  # fmt: skip

    metrics = _cached({**data_key, "kind": "pixels"}, pixels)
    strongest: dict[str, float] = {}
    for init in PATCH_INITS:
        shape = spec.model.model_copy(update={"patch_init": init})

        def random_init(shape: ModelSpec = shape, init: str = init) -> dict:
            model = build_model(shape, spec.data.image_size, spec.data.channels, spec.seed)
            encoder = model.encoder.to(device).eval()
            return _scores(f"random_{init}_", _features(encoder, spec, data, device), spec, data)

        key = {**data_key, "model": shape.model_dump(mode="json"), "seed": spec.seed}
        scores = _cached({**key, "kind": "random-init"}, random_init)
        metrics |= scores
        unprefixed = {k.replace(f"random_{init}_", "random_"): v for k, v in scores.items()}
        if not strongest or (
            unprefixed["eval/random_probe_val_acc"] > strongest["eval/random_probe_val_acc"]
        ):
            strongest = unprefixed
    return metrics | strongest


@torch.inference_mode()
def diagnostics(
    spec: ExperimentSpec,
    data: Dataset,
    model: JEPA,
    strategy: Strategy,
    test_features: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Collapse diagnostics, computed the same way for every strategy."""
    images = normalise(data.test_images[:HELD_OUT].to(device), data.mean, data.std)
    masks = sample_masks(spec.mask, spec.grid, len(images), PROBE_SEED).to(device)
    losses = jepa_losses(model, strategy, images, masks, spec.loss, step=0)
    encoder = strategy.eval_encoder(model.encoder)
    targets = normalise_targets(encoder(images).float(), spec.loss)
    return {
        "diag/rankme": rankme(test_features),
        "diag/std": mean_std(test_features),
        "diag/sigreg": sigreg_statistic(test_features),
        "diag/pred_loss": float(losses.prediction),
        "diag/positional_share": positional_share(targets),
    }


@contextlib.contextmanager
def _evaluating(model: JEPA, strategy: Strategy) -> Iterator[None]:
    """Eval mode (dropout off, SIGReg not all-reduced) for the block, training mode after."""
    model.eval()
    strategy.eval()
    try:
        yield
    finally:
        model.train()
        strategy.train()


CURVE = {  # probe-curve metric -> the evaluation metric it samples mid-run
    "curve/probe_acc": "eval/probe_acc",
    "curve/probe_val_acc": "eval/probe_val_acc",
    "curve/knn_acc": "eval/knn_acc",
    "curve/rankme": "diag/rankme",
    "curve/std": "diag/std",
}


def curve_point(metrics: dict[str, float]) -> dict[str, float]:
    """The ``curve/*`` subset of evaluation metrics (a probe-curve point)."""
    return {name: metrics[source] for name, source in CURVE.items()}


@torch.inference_mode()
def probe_now(
    spec: ExperimentSpec, data: Dataset, model: JEPA, strategy: Strategy, device: torch.device
) -> dict[str, float]:
    """The probe and the feature diagnostics of the model as it is now (``curve/*``)."""
    with _evaluating(model, strategy):
        features = _features(strategy.eval_encoder(model.encoder), spec, data, device)
        scores = _scores("", features, spec, data)
    diag = {"diag/rankme": rankme(features[1]), "diag/std": mean_std(features[1])}
    return curve_point(scores | diag)


def evaluate(
    spec: ExperimentSpec,
    data: Dataset,
    model: JEPA,
    strategy: Strategy,
    device: torch.device,
    progress: Progress,
) -> dict[str, float]:
    """All evaluation metrics of a trained model (``eval/*`` and ``diag/*``)."""
    with _evaluating(model, strategy):
        encoder = strategy.eval_encoder(model.encoder)
        progress("evaluate", 0, 3)
        features = _features(encoder, spec, data, device)
        metrics = _scores("", features, spec, data)
        progress("evaluate", 1, 3)
        metrics |= diagnostics(spec, data, model, strategy, features[1], device)
        progress("evaluate", 2, 3)
        if spec.eval.baselines:
            metrics |= baselines(spec, data, device)
            metrics["eval/gain_over_random"] = (
                metrics["eval/probe_acc"] - metrics["eval/random_probe_acc"]
            )
        progress("evaluate", 3, 3)
    return metrics
