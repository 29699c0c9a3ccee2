"""jepa-lab: ablations of JEPA collapse prevention (EMA, SIGReg, none), tracked and searched.

The Python API, for notebooks and scripts::

    from jepa_lab import load_spec, train, evaluate

    spec = load_spec("studies/smoke.yaml", ["strategy.kind=sigreg"])  # FILE:LINE errors
    result = train(spec, options=TrainOptions(run_dir=Path("runs/mine")))
    print(result.metrics["eval/probe_acc"], result.metrics["eval/random_probe_acc"])
    metrics = evaluate(spec, Path("runs/mine/checkpoint.pt"))  # a saved run, evaluated again

``import jepa_lab`` and :func:`load_spec` never import torch (about 0.1 s); :func:`train` and
:func:`evaluate` load it on first use (about 2 s). Nothing here logs to MLflow: that is the
command line's job (``jepa-lab train``), or :mod:`jepa_lab.track.writer` for your own runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.training.loop import Log, Progress, TrainOptions
    from jepa_lab.training.result import TrainResult

__all__ = ["TrainOptions", "evaluate", "load_spec", "train"]


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """The validated experiment spec in ``path``, with ``KEY.PATH=VALUE`` overrides merged in.

    Raises :class:`jepa_lab.spec.load.SpecError`, one ``FILE:LINE: field: message`` per problem.
    """
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.spec.load import load

    return load(ExperimentSpec, Path(path), list(overrides))


def train(
    spec: ExperimentSpec,
    *,
    options: TrainOptions | None = None,
    log: Log | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Pre-train ``spec``, evaluate it and return the result. ``log(metrics, step)`` receives
    every logged row, ``progress(phase, done, total)`` every step (see
    :func:`jepa_lab.training.loop.train`)."""
    from jepa_lab.training import loop

    return loop.train(
        spec, log=log or loop.nothing, progress=progress or loop.nothing, options=options
    )


def evaluate(
    spec: ExperimentSpec,
    checkpoint: str | Path,
    *,
    data_dir: str | Path | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """The ``eval/*`` and ``diag/*`` metrics of a run's saved ``checkpoint``, written by a run
    of ``spec``: the same evaluation training ends with."""
    from jepa_lab.training.saved import evaluate_checkpoint

    where = Path(data_dir) if data_dir is not None else None
    return evaluate_checkpoint(spec, Path(checkpoint), data_dir=where, device=device)


def __getattr__(name: str) -> Any:
    if name == "TrainOptions":  # a dataclass of the training layer, loaded on first use
        from jepa_lab.training.loop import TrainOptions

        return TrainOptions
    raise AttributeError(f"module 'jepa_lab' has no attribute {name!r}")
