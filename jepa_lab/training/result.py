"""What a training run returns: :class:`TrainResult`, written to result.json and logged to MLflow,
and the description of its dataset (no host paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jepa_lab.data.datasets import Dataset
from jepa_lab.eval.deploy import Embedder, Quantised
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.world import WorldSpec
from jepa_lab.training.checkpoint import Records


@dataclass
class TrainResult:
    spec: ExperimentSpec | WorldSpec
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # probe against steps
    # Per-image test predictions of the probes (jepa_lab.eval.evaluate.PREDICTIONS -> compact
    # text): what paired tests over test images read.
    predictions: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, str | bool | None] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)  # name, digest, sizes: no host paths
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    completed: bool = True
    # per-horizon arrays (world models): logged as metrics with the horizon step (1..K) as step
    series: dict[str, list[float]] = field(default_factory=dict)
    deploy: dict[str, Any] = field(default_factory=dict)  # INT8 context: backend, threads, load
    # Not in result.json: the evaluation encoder (fp32 CPU copy, normalisation inside) and its
    # INT8 copy when eval.deploy is on, for the tracker to log as MLflow models.
    encoder: Embedder | None = field(default=None, repr=False)
    int8: Quantised | None = field(default=None, repr=False)

    def records(self, window: list[float]) -> Records:
        """The logged rows, the probe curve and the open log ``window`` (Records): what a
        checkpoint keeps for a resumed run."""
        return {"history": self.history, "curve": self.curve, "window": window}

    def to_dict(self) -> dict[str, Any]:
        """The result as written to result.json and logged to MLflow."""
        return {
            "spec": self.spec.to_dict(),
            "spec_digest": self.spec.digest(),
            "config_id": self.spec.digest(with_seed=False),
            "steps": self.steps,
            "completed": self.completed,
            "metrics": self.metrics,
            "train_seconds": self.train_seconds,
            "images_per_second": self.images_per_second,
            "history": self.history,
            "curve": self.curve,
            "predictions": self.predictions,
            "series": self.series,
            "dataset": self.dataset,
            "provenance": self.provenance,
            **({"deploy": self.deploy} if self.deploy else {}),
        }


def describe(data: Dataset) -> dict[str, Any]:
    """What identifies a dataset in a result: name, digest, split sizes, shape (no host paths)."""
    return {
        "name": data.name,
        "digest": data.digest,
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "classes": data.n_classes,
        "image_shape": list(data.train_images.shape[1:]),
        "origin": "generated" if data.source == "generated" else "file",
    }
