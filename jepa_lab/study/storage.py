"""Where a study lives and who works on it: the Optuna storage, the claim lock, worker identities.

The storage is a journal file (the default, one machine), SQLite, or PostgreSQL (workers on
several machines, with Optuna's heartbeat). The claim lock (see :mod:`jepa_lab.study.runner`) is an
``flock`` beside a local storage file, a PostgreSQL advisory lock otherwise; both vanish with
their holder. A worker's identity (host, pid, process start time) tells a dead worker's trial from
a running one on this host.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial

from jepa_lab.track.backoff import Backoff, with_backoff
from jepa_lab.track.filelock import exclusive
from jepa_lab.track.redact import redact, redact_text

STORAGE_ENV = "JEPA_LAB_STORAGE"
HEARTBEAT_S = 10  # PostgreSQL: seconds between a running trial's heartbeats
GRACE_S = 60  # ... and without one before the trial counts as dead (fail + retry)
DB_RETRY_ENV = "JEPA_LAB_DB_RETRY_S"
DB_RETRY_S = 300.0  # a lost database connection is retried this long before the worker gives up

T = TypeVar("T")


class StudyError(Exception):
    """The study cannot run (storage, definition mismatch); the one-line message names the fix."""


class StorageUnreachable(StudyError):
    """The database stayed unreachable for longer than $JEPA_LAB_DB_RETRY_S."""


# ------------------------------------------------------------------------------ storage


@dataclass(frozen=True)
class Storage:
    """Where the Optuna study lives: a journal file (default), SQLite, or PostgreSQL."""

    kind: str  # "journal", "sqlite" or "postgresql"
    url: str  # the file path (journal) or the database URL

    @property
    def shown(self) -> str:
        """The URL without a password (safe to print and log)."""
        return redact(self.url)

    @property
    def heartbeat(self) -> bool:
        return self.kind == "postgresql"


def resolve_storage(url: str | None, tracking_uri: str, study: str) -> Storage:
    """The ``--storage`` flag, else $JEPA_LAB_STORAGE, else a journal file next to the tracking
    store (``<store folder>/studies/STUDY.journal``; the project home for a tracking server)."""
    url = url or os.environ.get(STORAGE_ENV) or None
    if url is None:
        from jepa_lab.track.store import home

        folder = home()
        if tracking_uri.startswith("sqlite:///"):
            folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
        return Storage("journal", str(folder / "studies" / f"{study}.journal"))
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return Storage("postgresql", _pg_driver(scheme) + url[len(scheme) :])
    if scheme == "sqlite":
        return Storage("sqlite", url)
    if scheme == "journal" or (not scheme and url.endswith((".journal", ".log"))):
        return Storage("journal", str(Path(url.removeprefix("journal://")).expanduser().resolve()))
    raise StudyError(
        f"storage {Storage('?', url).shown!r} is not supported: use postgresql://USER@HOST/DB "
        "(workers on several machines), sqlite:///PATH.db, or a PATH.journal file (one machine; "
        "the default)"
    )


def _pg_driver(scheme: str) -> str:
    """``postgresql+DRIVER``: an explicit driver is kept; else psycopg (SQLAlchemy 2.1's default)
    if installed, else psycopg2 (what jepa-lab depends on)."""
    import importlib.util

    if scheme.startswith("postgresql+"):
        return scheme
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg"
    return "postgresql+psycopg2"


class _ReadOnlyLock(JournalFileOpenLock):
    """The journal lock of a session that only reads: taking it (to write) is a bug."""

    def __init__(self, path: str) -> None:
        self._path = path

    def acquire(self) -> bool:
        raise StudyError(f"{self._path} was opened read-only (status, export, plot): not written")

    def release(self) -> None:
        pass


class _FlockLock(JournalFileOpenLock):
    """The journal's write lock as an ``flock``: released by the OS when its holder dies, so a
    killed worker leaves no ``.lock`` file to wait 30 s for (Optuna's file locks do)."""

    def __init__(self, path: str) -> None:
        self._path = path + ".flock"
        self._handle: Any = None

    def acquire(self) -> bool:
        handle = open(self._path, "a")  # noqa: SIM115 - held until release()
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return True

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _repair_journal(path: Path) -> None:
    """Drop a last line cut short by a kill mid-write (else the next append corrupts it)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


@contextlib.contextmanager
def _pg_lock(url: str, name: str, *, retry: bool = True) -> Iterator[None]:
    """A PostgreSQL session advisory lock named ``name``; freed if the connection dies.
    ``retry``: a lost connection is retried (a study under way); without it a database that
    does not answer fails at once (opening a storage: a wrong URL is one line, not a wait)."""
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def lock() -> sqlalchemy.Connection:
        connection = engine.connect()
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            connection.close()
            raise
        return connection

    try:
        connection = retrying(lock, redact(url)) if retry else lock()
        try:
            yield
        finally:
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
            except sqlalchemy.exc.DBAPIError as exc:
                if not _connection_lost(exc):
                    raise
                # the lock died with its connection (a database restart): nothing to free
            finally:
                connection.close()
    finally:
        engine.dispose()


def claim_lock(storage: Storage, study: str) -> contextlib.AbstractContextManager[None]:
    """The study's claim lock (see the module docstring)."""
    if storage.kind == "postgresql":
        return _pg_lock(storage.url, f"jepa_lab.study.{study}")
    path = Path(
        storage.url if storage.kind == "journal" else storage.url.removeprefix("sqlite:///")
    )
    return exclusive(path.with_name(f".{path.name}.{study}.claim"))


def _read_only(storage: Storage) -> BaseStorage:
    """The storage opened for reading only: no file created, locked or repaired, so an archived
    (read-only) study reads, and reading a study that does not exist leaves nothing behind."""
    if storage.kind == "postgresql":
        return RDBStorage(storage.url)
    path = Path(storage.url.removeprefix("sqlite:///").split("?")[0]).expanduser().resolve()
    if not path.is_file():
        raise StudyError(
            f"no study storage at {path}: start a study there with `jepa-lab run`, or check "
            "--storage"
        )
    if storage.kind == "journal":
        return JournalStorage(JournalFileBackend(str(path), lock_obj=_ReadOnlyLock(str(path))))
    # SQLite's own read-only mode: the database file is opened, never written or created.
    return RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")


def open_storage(
    storage: Storage,
    on_stale: Callable[[optuna.Study, FrozenTrial], None],
    *,
    read_only: bool = False,
) -> BaseStorage:
    """The Optuna storage; PostgreSQL gets heartbeats whose stale trials go to ``on_stale``.
    ``read_only``: for status, export and plot (see :func:`_read_only`)."""
    try:
        if read_only:
            return _read_only(storage)
        if storage.kind == "journal":
            path = Path(storage.url)
            path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(path.with_name(path.name + ".flock")):
                _repair_journal(path)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=_FlockLock(str(path))))
        if storage.kind == "sqlite":
            return RDBStorage(storage.url, engine_kwargs={"connect_args": {"timeout": 60}})
        with _pg_lock(storage.url, "jepa_lab.schema", retry=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _RetryingRDBStorage(  # one process at a time creates the tables
                storage.url,
                # a pooled connection that died with a database restart is replaced, not used
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=on_stale,
            )
    except (OSError, ImportError) as exc:
        raise StudyError(f"storage {storage.shown}: {redact_text(str(exc))}") from exc
    except Exception as exc:  # SQLAlchemy's connection errors, without importing it eagerly
        if type(exc).__module__.startswith("sqlalchemy"):
            text = redact_text(" ".join(str(exc).split()))[:300]
            raise StudyError(f"storage {storage.shown} is unusable: {text}") from exc
        raise


# ------------------------------------------------------------------- database outages


def db_retry_s() -> float:
    """Seconds a lost database connection is retried: $JEPA_LAB_DB_RETRY_S, else 300."""
    text = os.environ.get(DB_RETRY_ENV, "").strip()
    try:
        return float(text) if text else DB_RETRY_S
    except ValueError:
        raise StudyError(f"{DB_RETRY_ENV}={text!r} is not a number of seconds") from None


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps: Optuna wraps SQLAlchemy's) is a lost or refused
    database connection, which a retry may cure; never a failure that retrying already gave up."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, StorageUnreachable):
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retrying(call: Callable[[], T], shown: str) -> T:
    """``call()``, retried with backoff (0.5 s doubling to 5 s) while the database connection is
    lost, for up to $JEPA_LAB_DB_RETRY_S; then :class:`StorageUnreachable`, one line."""

    def transient(exc: Exception) -> BaseException | None:
        return exc if _connection_lost(exc) else None

    def give_up(cause: BaseException, waited: float) -> BaseException:
        text = redact_text(" ".join(str(cause.__cause__ or cause).split()))[:200]
        return StorageUnreachable(
            f"storage {shown} unreachable for {waited:.0f} s ({text}): this worker stops; its "
            f"trial is retried once the database is back (set {DB_RETRY_ENV} to wait longer)"
        )

    backoff = Backoff(f"storage {shown}", db_retry_s(), 0.5, 5.0, "connection lost", "reconnected")
    return with_backoff(call, backoff, transient, give_up)


class _RetryingRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose every call retries a lost connection (see :func:`retrying`):
    claims, tells, attributes and heartbeats survive a database restart."""


def _retried(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        return retrying(lambda: method(self, *args, **kwargs), redact(self.url))

    return wrapper


for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
    # what Optuna's cache in front of the storage calls directly
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
):  # fmt: skip
    setattr(_RetryingRDBStorage, _name, _retried(getattr(RDBStorage, _name)))


# ------------------------------------------------------------------------------ workers


def worker_identity() -> str:
    """``host:pid:start`` of this process; ``start`` (clock ticks since boot) guards pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]


def worker_alive(identity: str) -> bool | None:
    """Whether the worker ``identity`` still runs: None when it ran on another host."""
    host, _, rest = identity.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start in ("?", _start_ticks(pid))
