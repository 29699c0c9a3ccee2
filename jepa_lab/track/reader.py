"""Reading logged runs back from the tracking store: a run's spec and the recent runs.

Reading never creates a local store: a missing one is a one-line :class:`TrackingError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from jepa_lab.track.store import HOME_ENV, TrackingError, redact, sqlite_path, translated
from jepa_lab.track.writer import SPEC_ARTIFACT


def _reader(uri: str) -> MlflowClient:
    """A client on a store that must exist already (reading never creates a local store)."""
    if uri.startswith("sqlite:") and not sqlite_path(uri).is_file():
        raise TrackingError(
            f"no tracking store at {sqlite_path(uri)} yet: log a run first (jepa-lab train), or "
            f"point --tracking-uri / {HOME_ENV} at the store"
        )
    return MlflowClient(uri)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """No tqdm bar for a one-file download (MLflow reads this variable at each transfer)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous


def spec_of_run(uri: str, run_id: str) -> dict[str, Any]:
    """The resolved spec a run logged (its ``spec.yaml``), for ``train --from-run``."""
    client = _reader(uri)
    with translated(uri):
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise TrackingError(
                f"run {run_id!r} not found in {redact(uri)}: check the id (jepa-lab runs list) "
                "and --tracking-uri"
            ) from exc
        names = {info.path for info in client.list_artifacts(run_id)}
        if SPEC_ARTIFACT not in names:
            raise TrackingError(
                f"run {run_id} has no {SPEC_ARTIFACT} artifact: it was not logged by jepa-lab train"
            )
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
            path = client.download_artifacts(run_id, SPEC_ARTIFACT, tmp)
            text = Path(path).read_text()
    try:  # safe_load: a !!python/... tag in a logged spec is refused, never run
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())[:200]
        raise TrackingError(f"run {run_id}: {SPEC_ARTIFACT} is not plain YAML ({reason})") from exc
    if not isinstance(data, dict):
        raise TrackingError(f"run {run_id}: {SPEC_ARTIFACT} is not a mapping")
    return data


@dataclass(frozen=True)
class RunSummary:
    name: str
    run_id: str
    experiment: str
    status: str
    start_time: float  # seconds since the epoch
    parent_run_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]


def recent_runs(uri: str, experiment: str | None = None, limit: int = 20) -> list[RunSummary]:
    """The latest ``limit`` runs of ``experiment`` (default: every experiment), newest first."""
    client = _reader(uri)
    with translated(uri):
        if experiment is None:
            experiments = list(client.search_experiments())
        else:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise TrackingError(
                    f"no experiment {experiment!r} in {redact(uri)}: see `jepa-lab runs list`"
                )
            experiments = [found]
        names = {e.experiment_id: e.name for e in experiments}
        runs = client.search_runs(
            list(names), order_by=["attributes.start_time DESC"], max_results=limit
        ) if names else []  # fmt: skip
    return [
        RunSummary(
            name=run.info.run_name or "",
            run_id=run.info.run_id,
            experiment=names[run.info.experiment_id],
            status=run.info.status,
            start_time=run.info.start_time / 1000,
            parent_run_id=run.data.tags.get(MLFLOW_PARENT_RUN_ID),
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
        )
        for run in runs
    ]
