"""Artifact locations of a local store, wherever the store's folder is now.

MLflow records absolute ``file://`` artifact locations in a SQLite store: each experiment's and
each run's (``ROOT/artifacts/EXPERIMENT/RUN_ID/artifacts``). Moving, copying or unpacking the
store's folder (``.jepa-lab/``: ``mlflow.db``, ``artifacts/``, ``studies/``) leaves them naming
the old place. Every jepa-lab store records where its artifact root was when it was created: the
Default experiment's location, ``ROOT/artifacts/0``. When that root is not the ``artifacts/``
folder beside the database now, the store has moved, and

- reading (a run's spec, result or checkpoint downloaded) swaps the old root for the current one
  in each location it uses (:func:`local_uri`), so an archived, read-only copy reads in place;
- a command that writes (``train``, ``run``, ``worker``; ``ui`` on a writable store) rewrites the
  locations in the database once (:func:`relocate`), under the store's lock, so new runs and
  artifacts land where the store is now, and MLflow's own readers (the UI, ``runs:/`` model
  URIs, ``mlflow models serve``) find them.

A copy of the database alone, whose artifacts stayed where they were, keeps pointing at them.
Light on purpose: sqlite3 only, no MLflow import.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

ARTIFACTS = "artifacts"
# (table, column, the tag key its rows must have): where MLflow 3 keeps artifact locations
COLUMNS = (
    ("experiments", "artifact_location", None),
    ("runs", "artifact_uri", None),
    ("logged_models", "artifact_location", None),
    ("model_versions", "storage_location", None),
    ("model_versions", "source", None),
    ("trace_tags", "value", "mlflow.artifactLocation"),
)


def artifact_root(db: Path) -> Path:
    """The artifact folder of the store whose database is ``db``: ``artifacts/`` beside it."""
    return db.parent / ARTIFACTS


def _path(uri: str) -> Path:
    return Path(url2pathname(urlsplit(uri).path))


def moved(db: Path) -> tuple[str, str] | None:
    """``(old root, root now)`` as ``file://`` URIs when the store at ``db`` was moved here with
    its artifacts; None when it was not (or was not made by jepa-lab, or only its database was
    copied and its artifacts are still at the old root). Opens the database read-only."""
    with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
        row = connection.execute(
            "SELECT artifact_location FROM experiments WHERE experiment_id = 0"
        ).fetchone()
    recorded = str(row[0]).rstrip("/") if row and row[0] else ""
    if not recorded.startswith("file:") or not recorded.endswith("/0"):
        return None
    old, now = recorded.removesuffix("/0"), artifact_root(db).as_uri()
    if old == now or (_path(old).is_dir() and not artifact_root(db).is_dir()):
        return None
    return old, now


def swap(location: str, roots: tuple[str, str] | None) -> str:
    """``location`` with the old root (``roots[0]``) replaced by the current one, if under it."""
    if roots is None:
        return location
    old, now = roots
    if location == old or location.startswith(old + "/"):
        return now + location[len(old) :]
    return location


def local_uri(db: Path, location: str) -> str:
    """Where the artifact ``location`` recorded in the store at ``db`` is now."""
    return swap(location, moved(db))


def relocate(db: Path) -> str | None:
    """Rewrite every artifact location of the store at ``db`` from its old root to where it is
    now, in one transaction; return the old root (None: it has not moved). Callers hold the
    store's lock (:func:`jepa_lab.track.store.prepare_store`)."""
    roots = moved(db)
    if roots is None:
        return None
    old, now = roots
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection, connection:
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        for table, column, key in COLUMNS:
            if table not in tables:
                continue
            # substr, not LIKE: a path may hold % or _
            under = f"({column} = ? OR substr({column}, 1, ?) = ?)"
            connection.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {under}"
                + (" AND key = ?" if key else ""),
                [now, len(old) + 1, old, len(old) + 1, old + "/", *([key] if key else [])],
            )
    return old
