"""Reading logged runs back from the tracking store: a run's artifacts, its spec, the recent runs.

Reading never creates a local store: a missing one is a one-line :class:`TrackingError`. A local
store that was moved or archived elsewhere is read where it is now (its artifact locations
resolved by :mod:`jepa_lab.track.location`), without writing to it.
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
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from jepa_lab.track.location import local_uri
from jepa_lab.track.store import HOME_ENV, TrackingError, redact, sqlite_path, translated
from jepa_lab.track.writer import SPEC_ARTIFACT


class MissingArtifact(TrackingError):
    """The run exists but has no such artifact."""


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


def _artifacts(uri: str, run_id: str) -> ArtifactRepository:
    """The artifacts of the run ``run_id``; a local store's where the store is now."""
    client = _reader(uri)
    with translated(uri):
        try:
            location = client.get_run(run_id).info.artifact_uri
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            raise TrackingError(
                f"run {run_id!r} not found in {redact(uri)}: check the id (jepa-lab runs list) "
                "and --tracking-uri"
            ) from exc
        if uri.startswith("sqlite:"):
            location = local_uri(sqlite_path(uri), location)
        return get_artifact_repository(location, tracking_uri=uri)


def download_artifact(uri: str, run_id: str, path: str, into: Path) -> Path:
    """Download the artifact ``path`` (e.g. ``result.json``, ``checkpoint/checkpoint.pt``) of the
    run ``run_id`` into the folder ``into``; return the file's path there. A missing artifact is
    a one-line :class:`MissingArtifact`."""
    artifacts = _artifacts(uri, run_id)
    folder, _, name = path.rpartition("/")
    with translated(uri):
        if name not in {Path(info.path).name for info in artifacts.list_artifacts(folder or None)}:
            raise MissingArtifact(f"run {run_id} has no {path} artifact in {redact(uri)}")
        with _no_progress_bar():
            return Path(artifacts.download_artifacts(path, str(into)))


def spec_of_run(uri: str, run_id: str) -> dict[str, Any]:
    """The resolved spec a run logged (its ``spec.yaml``), for ``train --from-run``."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = download_artifact(uri, run_id, SPEC_ARTIFACT, Path(tmp)).read_text()
        except MissingArtifact:
            raise TrackingError(
                f"run {run_id} has no {SPEC_ARTIFACT} artifact: it was not logged by jepa-lab train"
            ) from None
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
