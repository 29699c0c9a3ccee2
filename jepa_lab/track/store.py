"""The MLflow tracking store: where it is, a fast preflight, and creating it and an experiment.

Local by default: a SQLite database and an artifact folder under one project-local home
(``.jepa-lab/``, or ``$JEPA_LAB_HOME``); a team uses an ``http(s)://`` tracking server the same
way. The store and the experiment are created once, in the parent, before any worker starts
(:func:`prepare_store`); a fresh SQLite store is built under a temporary name and renamed into
place, so a kill mid-creation leaves no store or a complete one. MLflow's, SQLAlchemy's and the
OS's errors arrive as one-line :class:`TrackingError` naming the URI and the fix. A local store
is relocatable: its folder may be moved or archived (:mod:`jepa_lab.track.location`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from jepa_lab.track.backoff import Backoff, with_backoff
from jepa_lab.track.filelock import exclusive
from jepa_lab.track.location import artifact_root, relocate
from jepa_lab.track.redact import redact, redact_text

DEFAULT_HOME = Path(".jepa-lab")
HOME_ENV = "JEPA_LAB_HOME"
DB_NAME = "mlflow.db"
CHECK_TIMEOUT_S = 5.0
MIN_FREE_BYTES = 64 * 2**20
# MLflow 3's UI shows an experiment as model training (runs, metrics), not GenAI (traces).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

RETRY_ENV = "JEPA_LAB_TRACKING_RETRY_S"
RETRY_S = 300.0  # an unreachable tracking server is retried this long before a run gives up
# MLflow's HTTP client retries a refused connection 7 times with backoff factor 2 (minutes) by
# default; jepa-lab's own loop (:func:`call`) does the waiting, bounded by
# $JEPA_LAB_TRACKING_RETRY_S, so each of its attempts stays short. Set either variable to override.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

T = TypeVar("T")

# MLflow narrates store creation and system-metrics sampling at INFO on stderr: keep warnings.
for _name in ("mlflow.store.db.utils", "mlflow.system_metrics", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class TrackingError(Exception):
    """The tracking store cannot be used; the one-line message names the URI and the fix."""


class TrackingUnavailable(TrackingError):
    """The tracking server did not answer (connection refused, 5xx): an outage, not a mistake."""


def home() -> Path:
    """The absolute project-local folder of the default store: $JEPA_LAB_HOME or .jepa-lab."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def default_uri() -> str:
    """``sqlite:////ABS/.jepa-lab/mlflow.db``."""
    return f"sqlite:///{home() / DB_NAME}"


def sqlite_path(uri: str) -> Path:
    path = uri.removeprefix("sqlite:///").split("?")[0]
    if not uri.startswith("sqlite:///") or path in ("", ":memory:"):
        raise TrackingError(f"tracking URI {uri!r} names no database file: use sqlite:///PATH.db")
    return Path(path).expanduser().resolve()


def resolve_uri(uri: str | None) -> str:
    """The flag, else $MLFLOW_TRACKING_URI, else :func:`default_uri`; SQLite paths made absolute
    (so every process, whatever its working directory, opens the same file)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        return f"sqlite:///{sqlite_path(uri)}"
    if scheme in ("http", "https"):
        return uri.rstrip("/")
    raise TrackingError(
        f"tracking URI {redact(uri)!r} is not supported: use sqlite:///PATH.db (local, the "
        "default) or http(s)://HOST:PORT of an MLflow server (MLflow's ./mlruns file store is "
        "deprecated; put a team database behind `mlflow server`)"
    )


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in a tracking server's UI (None for a local store)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{redact(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line, cut to ``limit`` characters (its type if it has none)."""
    text = redact_text(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_store(uri: str, *, write: bool = True, no_track: bool = False) -> None:
    """Fast preflight: an http(s) server answers /health, or a SQLite store's folder is usable
    (writable with free space if ``write``; a command that only reads works on an archived,
    read-only store). ``no_track``: the command has a --no-track option to suggest.

    Raises :class:`TrackingError` naming the URI and the fix, in seconds, before any training.
    """
    offline = ", or pass --no-track" if no_track else ""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=CHECK_TIMEOUT_S):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # it answers (an auth proxy may guard /health)
                return
            reason = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, refused, timeout
            reason = one_line(getattr(exc, "reason", exc))
        raise TrackingError(
            f"tracking server {redact(uri)} does not answer ({reason}): start it, or fix "
            f"--tracking-uri / MLFLOW_TRACKING_URI{offline}"
        )
    db = sqlite_path(uri)
    folder = next(p for p in (db.parent, *db.parents) if p.exists())
    if db.exists() and not db.is_file():
        raise TrackingError(f"tracking store {db} is not a file: remove it or pick another path")
    if not write:
        return
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"tracking store folder {folder} is not writable: fix its permissions")
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise TrackingError(
            f"only {free // 2**20} MiB free on the disk of {db.parent}: free some space, or "
            f"point {HOME_ENV} elsewhere{offline}"
        )


def _store_lock(db: Path) -> contextlib.AbstractContextManager[None]:
    """The lock beside ``db`` held while the store is created or its experiment added."""
    return exclusive(db.with_name(f".{db.name}.lock"))


def _ready_sqlite(db: Path) -> None:
    """The store at ``db`` ready to use where it is: created if absent, its artifact locations
    rewritten if it was moved (:func:`jepa_lab.track.location.relocate`). Callers hold
    ``_store_lock(db)``."""
    _build_sqlite(db)
    relocate(db)


def _build_sqlite(db: Path) -> None:
    """Create the store at ``db`` if absent: schema built under a temporary name, then renamed.

    A SIGKILL during MLflow's schema migration leaves a temporary file only (removed by the next
    creation), never a half-migrated store at ``db``. Callers hold ``_store_lock(db)``.
    """
    if db.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in db.parent.glob(f".{db.name}.*.tmp*"):
        stale.unlink()
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    # the Default experiment's location records the artifact root (jepa_lab.track.location)
    store = SqlAlchemyStore(tmp_uri, artifact_root(db).as_uri())
    # MLflow caches one engine per URI: close it, so no connection outlives the rename.
    store.engine.dispose()
    SqlAlchemyStore._engine_map.pop(tmp_uri, None)
    os.replace(tmp, db)
    directory = os.open(db.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


@contextlib.contextmanager
def translated(uri: str) -> Iterator[None]:
    """MLflow's, SQLAlchemy's, sqlite3's and the OS's errors as one-line TrackingErrors naming
    ``uri``."""
    try:
        yield
    except TrackingError:
        raise
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
        # OSError: requests' too
        raise TrackingError(f"tracking store {redact(uri)}: {one_line(exc)}") from exc


def retry_s() -> float:
    """Seconds an unreachable tracking server is retried: $JEPA_LAB_TRACKING_RETRY_S, else 300."""
    text = os.environ.get(RETRY_ENV, "").strip()
    try:
        return float(text) if text else RETRY_S
    except ValueError:
        raise TrackingError(f"{RETRY_ENV}={text!r} is not a number of seconds") from None


def _transient(uri: str, exc: BaseException) -> bool:
    """A tracking server that did not answer (refused, reset, timed out, 5xx). A local store's
    errors (a full disk, a locked file) and a server's 4xx answers are not retried."""
    if not uri.startswith(("http://", "https://")) or isinstance(exc, TrackingError):
        return False
    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    return isinstance(exc, OSError)  # requests' ConnectionError and Timeout are OSErrors


def call(uri: str, action: Callable[[], T], limit: float | None = None) -> T:
    """``action()`` with its errors translated (see :func:`translated`); a tracking server that
    does not answer is retried with backoff (1 s doubling to 10 s) for up to ``limit`` seconds
    ($JEPA_LAB_TRACKING_RETRY_S by default), then :class:`TrackingUnavailable`."""
    limit = retry_s() if limit is None else limit

    def attempt() -> T:
        with translated(uri):
            return action()

    def transient(exc: Exception) -> BaseException | None:
        cause = exc.__cause__ if isinstance(exc, TrackingError) else None
        return cause if cause is not None and _transient(uri, cause) else None

    def give_up(cause: BaseException, waited: float) -> BaseException:
        return TrackingUnavailable(
            f"tracking server {redact(uri)} unreachable for {waited:.0f} s "
            f"({one_line(cause, 160)}): start it again, or set {RETRY_ENV} to wait longer"
        )

    backoff = Backoff(
        f"tracking server {redact(uri)}", limit, 1.0, 10.0, "did not answer", "answered again"
    )
    return with_backoff(attempt, backoff, transient, give_up)


def ensure_store(uri: str) -> None:
    """Create a local SQLite store at ``uri`` if absent (atomically), or rewrite the artifact
    locations of one that was moved to where it is now; no-op for a server."""
    check_store(uri)
    if uri.startswith("sqlite:"):
        db = sqlite_path(uri)
        with translated(uri), _store_lock(db):
            _ready_sqlite(db)


def prepare_store(uri: str, experiment: str) -> str:
    """Check or create the store and the experiment ``experiment``; return the experiment id.

    Local experiments get an absolute ``file://`` artifact location under the store's folder
    (``.jepa-lab/artifacts/NAME``), so it does not depend on the creating process's directory;
    a store that was moved has its locations rewritten to where it is now first
    (:func:`jepa_lab.track.location.relocate`); a server picks its own. Safe to call from several
    processes at once.
    """
    check_store(uri)
    local = uri.startswith("sqlite:")
    db = sqlite_path(uri) if local else None
    with translated(uri), _store_lock(db) if db else contextlib.nullcontext():
        location = None
        if db is not None:
            _ready_sqlite(db)
            location = (artifact_root(db) / _slug(experiment)).as_uri()
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return client.create_experiment(experiment, location, tags=EXPERIMENT_TAGS)
            except MlflowException as exc:  # another process of a server created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(experiment)
                assert found is not None
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {experiment!r} in {redact(uri)} is deleted: restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or pass "
                "--experiment with another name"
            )
        return found.experiment_id
