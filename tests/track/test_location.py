"""A local store moved elsewhere (its whole folder) reads back through the real CLI, read-only and
in place, its artifacts found where the store is now; the first command that writes rewrites its
artifact locations, and nothing names the old path afterwards."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jepa_lab.cli.main import app
from jepa_lab.track.location import COLUMNS, local_uri, moved, relocate, swap

from ..conftest import STUDIES
from ..study.test_readonly import snapshot
from ..study.test_study import TINY, cli, write_study

TRAIN = [f"{key}={json.dumps(value)}" for key, value in TINY.items()]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def locations(db: Path) -> list[str]:
    """Every artifact location the store at ``db`` records (see location.COLUMNS)."""
    found = []
    with sqlite3.connect(db) as connection:
        tables = {n for (n,) in connection.execute("SELECT name FROM sqlite_master")}
        for table, column, key in COLUMNS:
            if table in tables:
                query = f"SELECT {column} FROM {table}" + (f" WHERE key = '{key}'" if key else "")
                found += [str(v) for (v,) in connection.execute(query) if v]
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store at ``old``: one tracked `train` run (with its checkpoint) and a 2-trial study."""
    root = tmp_path_factory.mktemp("relocate")
    old = root / "old" / ".jepa-lab"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE", "JEPA_LAB_WORKER_INDEX"):
            patch.delenv(name, raising=False)
        patch.setenv("JEPA_LAB_HOME", str(old))
        patch.chdir(root)
        trained = invoke("train", str(STUDIES / "smoke.yaml"), "--no-progress",
                         *[a for pair in (("--set", s) for s in TRAIN) for a in pair],
                         )  # fmt: skip
        assert trained.exit_code == 0, trained.output
        study = write_study(root, "moved", grid={"strategy.kind": ["ema", "none"]})
        ran = invoke("run", str(study), "--no-progress")
        assert ran.exit_code == 0, ran.output
    runs = sqlite3.connect(old / "mlflow.db").execute("SELECT run_uuid, name FROM runs")
    run_id = next(i for i, name in runs if not name.startswith(("study-", "trial-")))
    yield {"root": root, "old": old, "study": study, "run_id": run_id}


def test_a_moved_store_reads_in_place_and_follows_on_the_first_write(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, run_id, study = store["old"], store["run_id"], store["study"]
    assert all(str(old) in where for where in locations(old / "mlflow.db"))
    home = tmp_path / "archive" / "store"
    shutil.move(old, home)  # the whole folder: database, artifacts, studies
    assert not old.exists()
    for name in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JEPA_LAB_HOME", str(home))
    monkeypatch.chdir(tmp_path)

    # read-only first (as test_readonly does: tests run as root, where chmod does not stop writes)
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: access(p, mode, **kw) and not (
            mode & os.W_OK and str(p).startswith(str(home))
        ),
    )  # fmt: skip
    before = snapshot(home)
    listed = invoke("runs", "list")
    assert listed.exit_code == 0 and run_id in listed.output, listed.output
    exported = invoke("export", str(study), "-f", "json", "-o", str(tmp_path / "t.json"))
    assert exported.exit_code == 0, exported.output
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert len(rows) == 2
    status = invoke("status", str(study))
    assert status.exit_code == 0 and "COMPLETE        2" in status.output, status.output
    # an artifact read: bench-encoder downloads the run's result.json and checkpoint
    benched = invoke("bench-encoder", run_id, "--no-track", "--tokens", "8", "--iters", "2",
                     "--rounds", "1", "--warmup", "1",
                     "--json", str(tmp_path / "b.json"))  # fmt: skip
    assert benched.exit_code == 0, benched.output
    assert json.loads((tmp_path / "b.json").read_text())["mlflow_run_id"] == run_id
    rerun = invoke("train", "--from-run", run_id, "--no-track", "--no-progress",
                   "--set", "optim.steps=2", "--run-dir", str(tmp_path / "again"))  # fmt: skip
    assert rerun.exit_code == 0, rerun.output  # its spec.yaml, read from the moved store
    outputs = listed.output + exported.output + status.output + benched.output + rerun.output
    assert str(old) not in outputs + (tmp_path / "t.json").read_text()
    assert snapshot(home) == before  # reading wrote nothing
    assert not old.exists()  # and recreated nothing at the old place
    db = home / "mlflow.db"
    assert moved(db) == ((old / "artifacts").as_uri(), (home / "artifacts").as_uri())
    monkeypatch.setattr(os, "access", access)

    # the first command that writes (here: resuming the finished study, in a fresh process as a
    # user's would be) rewrites the locations
    resumed = cli("run", str(study), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "already complete" in resumed.stderr
    assert moved(db) is None
    recorded = locations(db)
    assert recorded and not [where for where in recorded if str(old) in where]
    assert all(where.startswith((home / "artifacts").as_uri()) for where in recorded)
    assert not old.exists()


def test_only_a_store_moved_with_its_artifacts_is_relocated(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from jepa_lab.track.reader import download_artifact
    from jepa_lab.track.store import ensure_store, prepare_store

    first = tmp_path / "first"
    uri = f"sqlite:///{first / 'mlflow.db'}"
    experiment = prepare_store(uri, "e")  # first: a client made first creates it (root ./mlruns)
    client = MlflowClient(uri)
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "kept", "notes/note.txt")
    where = run.info.artifact_uri
    assert moved(first / "mlflow.db") is None and relocate(first / "mlflow.db") is None
    assert local_uri(first / "mlflow.db", where) == where
    # the database alone copied, its artifacts still where they were: left pointing at them
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(first / "mlflow.db", copy)
    assert moved(copy) is None and relocate(copy) is None
    assert locations(copy) == locations(first / "mlflow.db")
    # the whole folder moved: read where it is now, then rewritten by what `jepa-lab ui` calls
    second = tmp_path / "second"
    shutil.move(first, second)
    db = second / "mlflow.db"
    now = (second / "artifacts").as_uri()
    assert local_uri(db, where) == now + where.removeprefix((first / "artifacts").as_uri())
    note = download_artifact(f"sqlite:///{db}", run.info.run_id, "notes/note.txt", tmp_path)
    assert note.read_text() == "kept"
    ensure_store(f"sqlite:///{db}")
    assert moved(db) is None and all(w.startswith(now) for w in locations(db))
    assert not first.exists()


def test_swap_replaces_only_the_old_root() -> None:
    roots = ("file:///a/.jepa-lab/artifacts", "file:///b/x%20y/artifacts")
    assert swap("file:///a/.jepa-lab/artifacts/e/r1/artifacts", roots) == (
        "file:///b/x%20y/artifacts/e/r1/artifacts"
    )
    assert swap("file:///a/.jepa-lab/artifacts", roots) == roots[1]
    assert swap("file:///a/.jepa-lab/artifacts2/e", roots) == "file:///a/.jepa-lab/artifacts2/e"
    assert swap("s3://b/a/.jepa-lab/artifacts/e", roots) == "s3://b/a/.jepa-lab/artifacts/e"
    assert swap("file:///a/.jepa-lab/artifacts/e", None) == "file:///a/.jepa-lab/artifacts/e"
