"""The MLflow UI: an ``mlflow server`` on a tracking store, started, awaited and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jepa_lab.track.location import artifact_root, moved
from jepa_lab.track.store import TrackingError, ensure_store, sqlite_path, translated


def server_command(backend_uri: str, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` on ``backend_uri``; a local store keeps its artifacts beside it."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--host", host, "--port", str(port), "--workers", str(workers)]  # fmt: skip
    if backend_uri.startswith("sqlite:"):
        command += ["--default-artifact-root", artifact_root(sqlite_path(backend_uri)).as_uri()]
    return command


def start_server(
    backend_uri: str, host: str, port: int, workers: int, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``mlflow server`` in its own process group (stop it with :func:`stop_server`). A
    local store is created if absent, and one that was moved has its artifact locations
    rewritten first if it is writable (a read-only one is only read)."""
    if backend_uri.startswith("sqlite:"):
        db = sqlite_path(backend_uri)
        with translated(backend_uri):
            follow = db.is_file() and os.access(db.parent, os.W_OK) and moved(db) is not None
        if follow or not db.is_file():
            ensure_store(backend_uri)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The GenAI job runner (extra worker processes) has nothing to do for jepa-lab.
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            server_command(backend_uri, host, port, workers),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip


def wait_for_server(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Return once ``url`` answers /health; TrackingError if the server exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise TrackingError(
                f"mlflow server exited with code {process.returncode}: "
                f"{' | '.join(tail) or 'no output'} (full log: {log})"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.25)
    raise TrackingError(
        f"mlflow server did not answer at {url} within {timeout:.0f} s (log: {log})"
    )


def stop_server(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Ctrl-C to the server's whole process group, then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace / 2)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived the leader
        os.killpg(process.pid, signal.SIGKILL)
