"""Evaluation of a trained JEPA: probe, kNN, baselines and collapse diagnostics.

Every encoder (trained, random-init, raw pixels) goes through the same features -> probe
procedure, on the same fixed probe subset (independent of the run seed, so runs are compared on
identical images). Baselines that do not depend on trained weights are cached on disk and reused.
The probes' per-image test predictions (``pred/*``, compact text) are kept beside the metrics,
so studies can pair two encoders image by image (McNemar, a bootstrap over test images).

Split protocol (docs/method.md): the encoder trains on every training image; a fixed seeded
permutation of the training images gives the probe subset (its first ``eval.probe_train``
images, ``eval.val_size`` of them the probe's validation split) and, from its tail, the
diagnostic slice (``DIAGNOSTIC_IMAGES``) that no probe ever sees. Everything a study may select
on (``eval/*probe_val_acc`` and every ``diag/*``) reads those training images; the test split is
touched once, for the reported ``eval/probe_acc``, ``eval/knn_acc`` and their baselines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jepa_lab.core.masks import sample_masks
from jepa_lab.core.models import JEPA, build_model, gather_tokens
from jepa_lab.core.objective import normalise_targets, prediction_loss
from jepa_lab.core.strategies import Strategy
from jepa_lab.core.strategies.sigreg import SigregStrategy
from jepa_lab.data.datasets import Dataset, normalise
from jepa_lab.eval.diagnostics import (
    mean_std,
    positional_share,
    prediction_error,
    rankme,
    sigreg_statistic,
)
from jepa_lab.eval.probe import encode_classes, fit_probe, knn_accuracy, pooled_features
from jepa_lab.spec.experiment import PATCH_INITS, ExperimentSpec, ModelSpec

Progress = Callable[[str, int, int], None]
Features = tuple[torch.Tensor, torch.Tensor]  # (train (n, D), test (m, D))

PROBE_SEED = 0  # the probe subset and its validation split are the same for every run
# Bumped whenever the probe procedure changes what it returns, so cached baselines are refitted.
# 2: the validation split is drawn by image index (the same images for every encoder).
# 3: the cached scores carry the per-image test predictions and the validation size.
# 4: the validation split is eval.val_size images; the diagnostic slice is kept out of the probe.
PROBE_VERSION = 4
# The per-image predictions a result keeps: the trained encoder's, the strongest random init's,
# raw pixels', and the test labels they are scored against.
PREDICTIONS = ("pred/probe", "pred/random_probe", "pred/pixel_probe", "pred/labels")
# Training images kept out of every probe and scored for the diag/* metrics (at most a quarter
# of a small training set): 1024 is enough for a stable positional share and prediction error,
# and the pooled SIGReg statistic is taken at n = 1024 (diagnostics.sigreg_statistic).
DIAGNOSTIC_IMAGES = 1024


def cache_dir() -> Path:
    root = os.environ.get("JEPA_LAB_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(root) if root else Path.home() / ".cache") / "jepa-lab"


def _training_order(n_train: int) -> tuple[torch.Tensor, int]:
    """The fixed seeded permutation of the training images and the diagnostic slice's size."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randperm(n_train, generator=generator), min(DIAGNOSTIC_IMAGES, n_train // 4)


def probe_subset(n_train: int, size: int | None) -> torch.Tensor:
    """Sorted indices of the training images the probe is fitted and validated on (fixed, seeded):
    the first ``size`` of the permutation, never reaching the diagnostic slice at its end."""
    order, held = _training_order(n_train)
    keep = n_train - held if size is None else min(size, n_train - held)
    return order[:keep].sort().values


def diagnostic_subset(n_train: int) -> torch.Tensor:
    """Sorted indices of the training images the diag/* metrics are computed on: the tail of the
    permutation, which no probe fit or validation ever reads."""
    order, held = _training_order(n_train)
    return order[n_train - held :].sort().values


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
    """Probe and kNN scores (floats) and the probe's test predictions (``pred/<prefix>probe``)."""
    return _probe_scores(prefix, features, spec, data) | _knn_scores(prefix, features, spec, data)


def _probe_scores(prefix: str, features: Features, spec: ExperimentSpec, data: Dataset) -> dict:
    index = probe_subset(len(data.train_labels), spec.eval.probe_train)
    train_y, test_y = data.train_labels.cpu()[index], data.test_labels.cpu()
    probe = fit_probe(features[0], train_y, features[1], test_y, spec.eval, PROBE_SEED, index)
    return {
        f"eval/{prefix}probe_acc": probe.test_acc,
        f"eval/{prefix}probe_val_acc": probe.val_acc,
        f"eval/{prefix}probe_val_n": float(probe.val_size),
        f"eval/{prefix}probe_val_acc_ci": probe.val_ci,
        f"eval/{prefix}probe_l2": probe.l2,
        f"pred/{prefix}probe": encode_classes(
            probe.test_pred if probe.test_pred is not None else b""
        ),
    }


def _knn_scores(prefix: str, features: Features, spec: ExperimentSpec, data: Dataset) -> dict:
    index = probe_subset(len(data.train_labels), spec.eval.probe_train)
    train_y, test_y = data.train_labels.cpu()[index], data.test_labels.cpu()
    knn = knn_accuracy(
        features[0], train_y, features[1], test_y, spec.eval.knn_k, spec.data.n_classes
    )
    return {f"eval/{prefix}knn_acc": knn}


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


def baselines(spec: ExperimentSpec, data: Dataset, device: torch.device) -> dict[str, Any]:
    """Probe and kNN on raw pixels and on random-init encoders of the same shape and seed.

    A random-init encoder is scored for every initialisation the framework offers
    (``eval/random_<init>_*``); ``eval/random_*`` repeats the strongest of them, so a weak
    initialisation can never make the bar a trained encoder must clear lower. The strongest is
    chosen on the probe's *validation* accuracy (ties: the first in PATCH_INITS) and reported with
    its test accuracy: choosing on test would raise the bar by test-sampling luck. Beside the
    float metrics: the probes' test predictions (``pred/*`` text).
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
    strongest: dict[str, Any] = {}
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


def _pooled_diagnostic(encoder: nn.Module, spec: ExperimentSpec, data: Dataset,
                       device: torch.device) -> torch.Tensor:  # fmt: skip
    """(n, D) mean-pooled features of the diagnostic slice."""
    index = diagnostic_subset(len(data.train_labels)).to(data.train_images.device)
    return pooled_features(
        encoder, lambda x: normalise(x, data.mean, data.std), data.train_images[index],
        spec.eval.batch_size, device,
    )  # fmt: skip


def _pooled_scores(pooled: torch.Tensor) -> dict[str, float]:
    return {
        "diag/rankme": rankme(pooled),
        "diag/std": mean_std(pooled),
        "diag/sigreg_pooled": sigreg_statistic(pooled),
    }


@torch.inference_mode()
def diagnostics(
    spec: ExperimentSpec,
    data: Dataset,
    model: JEPA,
    strategy: Strategy,
    device: torch.device,
) -> dict[str, float]:
    """Collapse diagnostics on the diagnostic slice of the training images, the same for every
    strategy (docs/method.md names each).

    The masked pass runs in chunks of the training batch (``optim.batch_size``), with masks drawn
    as in training from fixed seeds, so truncation to a batch minimum bites as it did in training.
    """
    encoder = strategy.eval_encoder(model.encoder)
    metrics = _pooled_scores(_pooled_diagnostic(encoder, spec, data, device))
    index = diagnostic_subset(len(data.train_labels)).to(data.train_images.device)
    raw = data.train_images[index]
    error = own = weight = 0.0
    tokens_seen: list[torch.Tensor] = []
    regularised: list[torch.Tensor] = []
    context_counts: list[torch.Tensor] = []
    target_counts: list[torch.Tensor] = []
    for chunk, start in enumerate(range(0, len(raw), spec.optim.batch_size)):
        images = normalise(raw[start : start + spec.optim.batch_size].to(device),
                           data.mean, data.std)  # fmt: skip
        masks = sample_masks(spec.mask, spec.grid, len(images), PROBE_SEED + chunk)
        context_counts.append(masks.context_counts())
        target_counts.append(masks.target_counts(spec.grid**2))
        masks = masks.to(device)
        predictions, context, full = model(images, masks, strategy.needs_full_pass)
        predictions = predictions.float()
        tokens = encoder(images).float()  # (B, N, K): what the evaluation encoder says
        size = predictions.numel()
        error += size * float(prediction_error(predictions, tokens, masks.targets))
        targets = normalise_targets(strategy.target_tokens(images, full).float(), spec.loss)
        targets = gather_tokens(targets, masks.targets.flatten(1)).view(predictions.shape)
        own += size * float(prediction_loss(predictions, targets, spec.loss))
        weight += size
        tokens_seen.append(normalise_targets(tokens, spec.loss).cpu())
        if isinstance(strategy, SigregStrategy):
            regularised.append(strategy.regularised(full, context).float().cpu())
    metrics |= {
        "diag/pred_loss": error / weight,
        "diag/train_loss_heldout": own / weight,
        "diag/positional_share": positional_share(torch.cat(tokens_seen)),
        "diag/context_tokens": float(torch.cat(context_counts).double().mean()),
        "diag/target_tokens": float(torch.cat(target_counts).double().mean()),
    }
    if regularised:
        metrics["diag/sigreg_regularised"] = sigreg_statistic(torch.cat(regularised))
    return metrics


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
        encoder = strategy.eval_encoder(model.encoder)
        scores = _scores("", _features(encoder, spec, data, device), spec, data)
        scores.pop("pred/probe")
        diag = _pooled_scores(_pooled_diagnostic(encoder, spec, data, device))
    return curve_point(scores | diag)


def evaluate(
    spec: ExperimentSpec,
    data: Dataset,
    model: JEPA,
    strategy: Strategy,
    device: torch.device,
    progress: Progress,
    predictions: dict[str, str] | None = None,
) -> dict[str, float]:
    """All evaluation metrics of a trained model (``eval/*`` and ``diag/*``), reporting each
    named phase (``eval features``, ``eval probe``, ``eval kNN``, ``eval diagnostics``, ``eval
    baselines``) as 0 of 1, then 1 of 1.

    ``predictions``, if given, receives the per-image test predictions of the probes
    (:data:`PREDICTIONS`, as :func:`jepa_lab.eval.probe.encode_classes` text).
    """
    with _evaluating(model, strategy):
        encoder = strategy.eval_encoder(model.encoder)
        progress("eval features", 0, 1)
        features = _features(encoder, spec, data, device)
        progress("eval features", 1, 1)
        progress("eval probe", 0, 1)
        scores = _probe_scores("", features, spec, data)
        progress("eval probe", 1, 1)
        progress("eval kNN", 0, 1)
        scores |= _knn_scores("", features, spec, data)
        progress("eval kNN", 1, 1)
        progress("eval diagnostics", 0, 1)
        scores |= diagnostics(spec, data, model, strategy, device)
        progress("eval diagnostics", 1, 1)
        if spec.eval.baselines:
            progress("eval baselines", 0, 1)
            scores |= baselines(spec, data, device)
            scores["eval/gain_over_random"] = (
                scores["eval/probe_acc"] - scores["eval/random_probe_acc"]
            )
            progress("eval baselines", 1, 1)
    if predictions is not None:
        scores["pred/labels"] = encode_classes(data.test_labels)
        predictions.update({k: scores[k] for k in PREDICTIONS if k in scores})
    return {k: float(v) for k, v in scores.items() if not k.startswith("pred/")}
