"""A study in MLflow: its parent run (created once, its status), ending the child runs a dead
worker left RUNNING, and the ``jepa_lab.*`` keys of a study's Optuna user attributes and MLflow
tags."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import yaml

from jepa_lab.study.quantities import quantity
from jepa_lab.study.session import Session
from jepa_lab.track.store import TrackingError

A = "jepa_lab."  # prefix of every user attribute and tag jepa-lab sets
PARENT, DIGEST, FINALIZED = A + "parent_run_id", A + "study_digest", A + "finalized"
NOTE = "mlflow.note.content"  # MLflow's description of an experiment or a run
WORKER, RUN_ID, ERROR, RETRY_OF = A + "worker", A + "mlflow_run_id", A + "error", A + "retry_of"
RETRIED_BY = A + "retried_by"  # on a failed trial: the number of the trial that retries it
# Optuna's own keys, which its tooling reads: the system attribute Optuna 2 set to a failed
# trial's exception text, and those of its RetryFailedTrialCallback on a retry (the first failed
# trial of the chain, and every failed trial of it)
FAIL_REASON, FAILED_TRIAL, RETRY_HISTORY = "fail_reason", "failed_trial", "retry_history"


def metric_name(metric: str) -> str:
    """``eval/probe_acc`` -> ``probe acc.``, for optuna-dashboard's axes and tables (the names of
    :mod:`jepa_lab.study.quantities`; an unknown metric keeps its key)."""
    return quantity(metric).label


@contextlib.contextmanager
def mlflow_client(uri: str) -> Iterator[Any]:
    """An ``MlflowClient`` whose errors arrive as one-line :class:`TrackingError`s.

    The tracking contract opens runs that close with their block; a study's parent run outlives
    processes, so its few calls (here and in :mod:`jepa_lab.study.results`) use this client.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        yield MlflowClient(uri)
    except MlflowException as exc:
        raise TrackingError(f"tracking store: {' '.join(str(exc).split())[:300]}") from exc


def create_parent(session: Session) -> str:
    """Create the study's parent run (its settings as params, its files as artifacts) and
    record its id in the study."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    spec = session.plan.spec
    tags = {
        A + "study": spec.name,
        A + "kind": "grid" if spec.grid_only else "search",
        MLFLOW_RUN_NAME: f"study-{spec.name}",
    }
    with mlflow_client(session.uri) as client:
        run_id = client.create_run(
            session.experiment_id, run_name=f"study-{spec.name}", tags=tags
        ).info.run_id
        params = {
            "study.n_trials": spec.n_trials,
            "study.objectives": ",".join(
                f"{o.metric}:{o.direction}:{o.reference}" for o in spec.objectives
            ),
        }
        if spec.search is not None:
            params |= {
                "study.sampler": spec.search.sampler.kind,
                "study.sampler_seed": spec.search.sampler.seed,
            }
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        client.log_text(run_id, session.plan.text, f"study/{session.plan.path.name}")
        client.log_text(
            run_id, yaml.safe_dump(session.plan.base, sort_keys=False), "study/base.yaml"
        )
        if spec.description:  # shown on the experiment's and the parent run's page
            client.set_experiment_tag(session.experiment_id, NOTE, spec.description)
            client.set_tag(run_id, NOTE, spec.description)
    session.study.set_user_attr(PARENT, run_id)
    return run_id


def log_aggregates(session: Session) -> None:
    """The study's progress on its parent run, as trials finish: ``study/n_complete``,
    ``study/n_failed`` and, per objective, the best value so far (``study/best/<metric>``), each
    at the step of the number of complete trials."""
    from optuna.trial import TrialState

    trials = session.trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    step = len(complete)
    metrics = {
        "study/n_complete": float(step),
        "study/n_failed": float(sum(t.state == TrialState.FAIL for t in trials)),
    }
    for index, objective in enumerate(session.plan.spec.objectives):
        values = [t.values[index] for t in complete]
        if values:
            best = min(values) if objective.direction == "minimize" else max(values)
            metrics[f"study/best/{objective.metric}"] = best
    with mlflow_client(session.uri) as client:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        client.log_batch(session.parent_run_id, metrics=batch)


def set_parent_status(session: Session, status: str) -> None:
    """RUNNING while a ``run`` works on the study; FINISHED, FAILED or KILLED when it ends."""
    with mlflow_client(session.uri) as client:
        if status == "RUNNING":
            client.update_run(session.parent_run_id, status="RUNNING")
        else:
            client.set_terminated(session.parent_run_id, status)


def end_orphan_runs(session: Session, number: int, reason: str) -> None:
    """End the MLflow runs of the retried trial ``number`` (its worker died) as KILLED: a
    RUNNING one, and a FINISHED one whose result never reached the storage (the database was
    unreachable past its limit), so a failed trial never shows a finished run."""
    query = f"tags.mlflow.parentRunId = '{session.parent_run_id}' and tags.`{A}trial` = '{number}'"
    with mlflow_client(session.uri) as client:
        for run in client.search_runs([session.experiment_id], query):
            if run.info.status == "KILLED":
                continue
            client.set_tag(run.info.run_id, A + "error", f"killed: {reason}")
            client.set_terminated(run.info.run_id, "KILLED")


def end_stale_runs(session: Session) -> list[str]:
    """End KILLED every RUNNING child run whose trial has finished in the storage: a run whose
    end could not be written because the tracking server was down when its trial was failed and
    retried. Called when a study is opened to run; returns the run ids it ended."""
    query = f"tags.mlflow.parentRunId = '{session.parent_run_id}' and attributes.status = 'RUNNING'"
    finished = {str(t.number): t.state.name for t in session.trials() if t.state.is_finished()}
    ended = []
    with mlflow_client(session.uri) as client:
        for run in client.search_runs([session.experiment_id], query):
            state = finished.get(run.data.tags.get(A + "trial", ""))
            if state is None or state == "COMPLETE":
                continue  # its trial still runs (or finished well and closes it itself)
            client.set_tag(run.info.run_id, A + "error", "killed: its trial was failed and retried")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended
