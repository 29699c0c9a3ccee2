"""Reading a study writes nothing: status, export, plot and `runs list` work on an archived,
read-only store (even with --storage and --tracking-uri given), and reading a study that never
ran leaves no file behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jepa_lab.cli.main import app
from jepa_lab.spec.plan import load_study
from jepa_lab.study import runner
from jepa_lab.study.storage import resolve_storage
from jepa_lab.study.trial import WorkerOptions

from .test_study import write_study

STORAGES = {"journal": None, "sqlite": "sqlite:///{home}/optuna.db"}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def scripted_train(spec: Any, **kwargs: Any) -> Any:
    """A fast stand-in for training: the bookkeeping around it is what is tested."""
    from jepa_lab.training.result import TrainResult

    sigreg = 9.0 if spec.strategy.kind == "ema" else 3.0
    metrics = {"diag/pred_loss": 0.4, "diag/sigreg_pooled": sigreg, "eval/probe_acc": 0.5}
    dataset = {"name": "synthetic", "digest": "0" * 64, "origin": "generated"}
    return TrainResult(spec, steps=6, metrics=metrics, dataset=dataset)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A store (tracking + one study per storage kind) whose every trial ran: (home, study)."""
    import jepa_lab.training.loop
    from jepa_lab.track.store import ensure_store

    home = tmp_path_factory.mktemp("archive")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    ensure_store(uri)
    path = write_study(home, "archived", grid={"strategy.kind": ["ema", "none"]})
    plan = load_study(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jepa_lab.training.loop, "train", scripted_train)
        patch.setenv("JEPA_LAB_HOME", str(home))
        for url in STORAGES.values():
            where = resolve_storage(url and url.format(home=home), uri, plan.name)
            session = runner.open_session(plan, where, uri)
            runner.work(session, WorkerOptions(device="cpu"), echo=lambda outcome: None)
            assert runner.is_complete(session)
    yield home, path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("kind", STORAGES)
def test_an_archived_read_only_study_reads_and_nothing_is_written(
    archive: tuple[Path, Path], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, study = archive
    home = tmp_path / "copy"
    shutil.copytree(source, home)
    # Tests run as root, where chmod a-w does not stop writes: the preflight sees what a user
    # sees on a read-only copy, and the snapshot proves that reading wrote nothing.
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: access(p, mode, **kw) and not (
            mode & os.W_OK and str(p).startswith(str(home))
        ),
    )  # fmt: skip
    for name in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JEPA_LAB_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = snapshot(home)
    url = STORAGES[kind]
    given = [
        "--tracking-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--storage", url.format(home=home) if url else str(home / "studies/archived.journal"),
    ]  # fmt: skip
    status = invoke("status", str(study), *given)
    assert status.exit_code == 0, status.output
    assert "COMPLETE        2" in status.output
    exported = invoke("export", str(study), "-f", "json", "-o", str(tmp_path / "f.json"), *given)
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "f.json").stat().st_size > 100
    plotted = invoke("plot", str(study), "-o", str(tmp_path / "front.html"), *given)
    assert plotted.exit_code == 0, plotted.output
    listed = invoke("runs", "list", "--experiment", "archived", *given[:2])
    assert listed.exit_code == 0 and "none-s0" in listed.output, listed.output
    assert snapshot(home) == before
    # a command that writes still refuses the read-only store, in one line
    ran = invoke("run", str(study), *given)
    assert ran.exit_code == 2 and "not writable" in ran.output, ran.output


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/new.db", "{tmp}/new.journal"])
@pytest.mark.parametrize("command", ["export", "status", "plot"])
def test_reading_a_study_that_never_ran_leaves_no_file(
    archive: tuple[Path, Path], tmp_path: Path, storage: str, command: str
) -> None:
    home, study = archive
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    given = ["--tracking-uri", f"sqlite:///{home / 'mlflow.db'}"]
    result = invoke(command, str(study), "--storage", storage.format(tmp=fresh), *given)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no study" in lines[0], lines
    assert list(fresh.iterdir()) == []


def test_export_latex_is_page_width_and_wide_has_every_column(
    archive: tuple[Path, Path], tmp_path: Path
) -> None:
    home, study = archive
    given = ["--tracking-uri", f"sqlite:///{home / 'mlflow.db'}"]
    for name, extra in (("page", []), ("wide", ["--wide"])):
        done = invoke("export", str(study), "-o", str(tmp_path / f"{name}.tex"), *extra, *given)
        assert done.exit_code == 0, done.output
    page, wide = (tmp_path / "page.tex").read_text(), (tmp_path / "wide.tex").read_text()
    columns = [line.split("{")[2].rstrip("}") for line in (page, wide)
               for line in line.splitlines() if line.startswith(r"\begin{tabular}")]  # fmt: skip
    # configuration, n, probe acc., the two objectives; wide: every quantity and comparison
    assert columns[0] == "lrrrr" and len(columns[1]) > len(columns[0])
    assert "configuration" in page and "Pareto front" in wide and "--wide" not in wide
    wrong = invoke("export", str(study), "-f", "md", "--wide", *given)
    assert wrong.exit_code == 2 and wrong.output.strip().splitlines() == [
        "error: --wide is for -f latex (the page-width table); md has every column already"
    ]
