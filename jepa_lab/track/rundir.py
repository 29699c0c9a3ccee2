"""The MLflow run of a run directory: ``jepa-lab train`` with tracking on writes
``mlflow_run.json`` (run id, experiment id, the store's URI without credentials) into the run
directory when the run opens, so a run directory maps to its run (``bench-encoder RUN_DIR`` logs
to it). Light on purpose: no MLflow import."""

from __future__ import annotations

import json
from pathlib import Path

from jepa_lab.track.redact import redact

RUN_FILE = "mlflow_run.json"


def record_run(run_dir: Path, uri: str, experiment_id: str, run_id: str) -> Path:
    """Write ``run_dir``/mlflow_run.json (atomically; a resumed run records its new run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_FILE
    data = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": redact(uri)}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    return path


def recorded_run(run_dir: Path) -> dict[str, str] | None:
    """The run recorded in ``run_dir`` (run_id, experiment_id, tracking_uri), or None when the
    run was not tracked or the file is unreadable."""
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str) or not data["run_id"]:
        return None
    return {key: str(value) for key, value in data.items()}


def same_store(recorded_uri: str, uri: str) -> bool:
    """Whether ``uri`` is the store a run directory recorded (compared without credentials)."""
    return redact(recorded_uri) == redact(uri)
