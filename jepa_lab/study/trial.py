"""One trial of a study: its settings (a grid cell or Optuna's suggestions), training and
evaluation inside its MLflow child run, and its objective values told to Optuna."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from jepa_lab.spec.load import SpecError
from jepa_lab.spec.plan import StudyPlan
from jepa_lab.study.session import Session
from jepa_lab.study.storage import StudyError
from jepa_lab.study.tracking import ERROR, FAIL_REASON, RETRIED_BY, RUN_ID, A
from jepa_lab.track.names import trial_run_name
from jepa_lab.track.store import TrackingError
from jepa_lab.track.writer import Tracking

if TYPE_CHECKING:
    from jepa_lab.training.loop import Progress


@dataclass(frozen=True)
class WorkerOptions:
    """Machine settings of a worker: never part of the study."""

    device: str | None = None
    data_dir: Path | None = None
    fail_fast: bool = False
    precision: str | None = None  # auto, fp32, bf16; None: auto
    share_cores: bool = False  # take cores // live local workers threads (study/local.py)


@dataclass
class Outcome:
    number: int
    state: str  # COMPLETE, FAIL
    values: list[float] | None = None
    error: str = ""
    seconds: float = 0.0
    name: str = ""  # the MLflow run name: strategy, differing settings, seed


def cell_params(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A grid cell as the Optuna params its trial will suggest (lists as their YAML text)."""
    return {k: v if _scalar(v) else _choice(v) for k, v in cell.items()}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _choice(value: Any) -> Any:
    from jepa_lab.spec.plan import flow

    return value if _scalar(value) else flow(value)


def suggest(
    plan: StudyPlan, trial: optuna.Trial, fixed: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The trial's settings (dotted key -> value): its grid cell, or the search's suggestions in
    declared order, a parameter only where its ``when`` holds for the spec so far.

    The seed is not a searched parameter (it would show in hyperparameter importance): it is
    enqueued with the grid cell, so it lives in the trial's system attribute
    ``fixed_params["seed"]`` (also what dedup and retries compare and copy), is read from
    ``fixed`` (those fixed params) and recorded as the user attribute ``jepa_lab.seed``."""
    from jepa_lab.spec.plan import lookup

    spec = plan.spec
    settings: dict[str, Any] = {}
    if spec.search is None:
        for key, values in (spec.grid or {}).items():
            chosen = trial.suggest_categorical(key, [_choice(v) for v in values])
            settings[key] = values[[_choice(v) for v in values].index(chosen)]
        if spec.seeds is not None:
            seed = (fixed or {}).get("seed")
            if seed not in spec.seeds:
                raise StudyError(f"trial {trial.number} has no enqueued seed (got {seed!r})")
            settings["seed"] = seed
        return settings
    for key, param in spec.search.params.items():
        if param.when:
            resolved = plan.resolved(settings)
            wanted = {k: v if isinstance(v, list) else [v] for k, v in param.when.items()}
            try:
                if any(lookup(resolved, k) not in v for k, v in wanted.items()):
                    continue
            except KeyError:
                continue
        if param.type == "categorical":
            assert param.choices is not None
            texts = [_choice(c) for c in param.choices]
            settings[key] = param.choices[texts.index(trial.suggest_categorical(key, texts))]
        elif param.type == "float":
            assert param.low is not None and param.high is not None
            settings[key] = trial.suggest_float(
                key, param.low, param.high, log=param.log, step=param.step
            )
        else:
            assert param.low is not None and param.high is not None
            settings[key] = trial.suggest_int(
                key, int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
            )
    return settings


def objective_values(plan: StudyPlan, metrics: Mapping[str, float]) -> list[float]:
    """The trial's objective values; a missing or non-finite one fails the trial."""
    from jepa_lab.training.loop import NonFiniteError, TrainingError

    values = []
    for objective in plan.spec.objectives:
        if objective.metric not in metrics:
            raise TrainingError(f"the result has no {objective.metric}: no objective value")
        value = float(metrics[objective.metric])
        if not math.isfinite(value):
            raise NonFiniteError(f"objective {objective.metric} is {value}: no finite result")
        values.append(value)
    return values


def failure_reason(exc: Exception) -> str:
    """Why a trial failed, in one line that starts with its kind: ``non-finite``, ``invalid
    combination``, ``training error`` or ``exception`` (the retries of :mod:`runner` add
    ``worker died``, ``no heartbeat`` and ``interrupted``)."""
    from jepa_lab.training.loop import NonFiniteError, TrainingError

    text = " ".join(str(exc).split())
    if isinstance(exc, SpecError):
        return "invalid combination: " + "; ".join(exc.messages)[:480]
    if isinstance(exc, NonFiniteError):
        return f"non-finite: {text}"[:500]
    if isinstance(exc, TrainingError):
        return f"training error: {text}"[:500]
    return f"exception: {type(exc).__name__}{': ' * bool(text)}{text}"[:500]


def record_failure(
    session: Session, number: int, reason: str, retried_by: int | None = None
) -> None:
    """Record why the unfinished trial ``number`` fails, before it is told FAIL: in
    ``jepa_lab.error`` and in Optuna's system attribute ``fail_reason``, where generic Optuna
    tools and optuna-dashboard show it; ``retried_by``: the trial that runs its parameters again.
    Raises ``UpdateFinishedTrialError`` if the trial finished meanwhile."""
    storage, trial_id = session.optuna_storage, session.trial_id(number)
    storage.set_trial_user_attr(trial_id, ERROR, reason)
    storage.set_trial_system_attr(trial_id, FAIL_REASON, reason)
    if retried_by is not None:
        storage.set_trial_user_attr(trial_id, RETRIED_BY, retried_by)


def run_trial(
    session: Session, trial: optuna.Trial, options: WorkerOptions, progress: Progress | None = None
) -> Outcome:
    """Train and evaluate one trial inside its MLflow child run; tell Optuna the result.

    A failing trial (non-finite loss or objective, invalid combination, any other exception) is
    told FAIL with its reason (:func:`failure_reason`, :func:`record_failure`), which its MLflow
    run carries too (``jepa_lab.error``). Infra
    errors (tracking store, dataset) and interruptions propagate: the caller retries the trial.
    """
    from jepa_lab.data.files import DataError
    from jepa_lab.study.local import thread_share, warn_if_loaded
    from jepa_lab.training.loop import TrainOptions, nothing, train

    began = time.perf_counter()
    warn_if_loaded()
    # recounted at each trial: workers come and go
    threads = thread_share() if options.share_cores else None
    plan = session.plan
    tags = {A + "study": plan.name, A + "trial": str(trial.number)}
    tracking = Tracking(
        session.uri, session.experiment_id, parent_run_id=session.parent_run_id, tags=tags
    )
    name = f"trial-{trial.number}"
    try:
        attrs = session.optuna_storage.get_trial_system_attrs(session.trial_id(trial.number))
        settings = suggest(plan, trial, attrs.get("fixed_params", {}))
        trial.set_user_attr(A + "settings", settings)
        invalid: SpecError | None = None
        try:  # an invalid combination still gets its (FAILED) run, named for what it is
            spec = plan.experiment(settings)
            name = trial_run_name(spec, settings, plan.base)
        except SpecError as exc:
            invalid, name = exc, f"invalid-trial-{trial.number}"
        with tracking.run(name) as logger, tempfile.TemporaryDirectory() as run_dir:
            trial.set_user_attr(RUN_ID, logger.run_id)
            if invalid is not None:
                raise invalid
            trial.set_user_attr(A + "config_id", spec.digest(with_seed=False))
            trial.set_user_attr(A + "spec_digest", spec.digest())
            trial.set_user_attr(A + "seed", spec.seed)
            trial.set_user_attr(A + "strategy", spec.strategy.kind)
            trial.set_user_attr(A + "run_name", name)
            logger.log_spec(spec)
            # the final checkpoint goes to the child run, as a `train` run's does
            result = train(
                spec,
                log=logger.log,
                progress=progress or nothing,
                options=TrainOptions(
                    device=options.device,
                    data_dir=options.data_dir,
                    run_dir=Path(run_dir),
                    precision=options.precision,
                    threads=threads,
                ),
            )
            if "precision" in result.provenance:  # what the step ran at: compared across trials
                trial.set_user_attr(A + "precision", result.provenance["precision"])
            values = objective_values(plan, result.metrics)
            logger.log_result(result, Path(run_dir))
            finite = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
            trial.set_user_attr(A + "metrics", finite)
            trial.set_user_attr(A + "predictions", result.predictions)
    except (TrackingError, DataError, StudyError):  # infra: the caller retries the trial
        raise
    except Exception as exc:  # the trial's own failure: recorded, and the study goes on
        reason = failure_reason(exc)
        # a heartbeat that went stale may have failed (and re-enqueued) it meanwhile
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            record_failure(session, trial.number, reason)
        session.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        seconds = time.perf_counter() - began
        return Outcome(trial.number, "FAIL", error=reason, seconds=seconds, name=name)
    session.study.tell(trial, values, skip_if_finished=True)
    return Outcome(trial.number, "COMPLETE", values, seconds=time.perf_counter() - began, name=name)
