"""Studies end to end: the real CLI in subprocesses, real Optuna storages, real MLflow stores.

Every study here trains the tiny synthetic experiment for a few steps. The checks that matter:
exactly ``n_trials`` complete trials with unique numbers (and unique grid cells), each with
exactly one finished MLflow child run under the study's parent run, no run left RUNNING, the
front equal to a brute-force non-dominated filter and its hypervolume to an independent
computation; after a SIGKILL mid-trial, a re-run completes the study with nothing lost or run
twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from jepa_lab.cli import workers
from jepa_lab.spec.load import SpecError
from jepa_lab.spec.plan import is_study_file, load_study
from jepa_lab.study import results as study_results
from jepa_lab.study import runner as study
from jepa_lab.study import tracking as study_tracking
from jepa_lab.study.storage import (
    Storage,
    StudyError,
    resolve_storage,
    worker_alive,
    worker_identity,
)
from jepa_lab.study.trial import WorkerOptions

from ..conftest import REPO, STUDIES
from .test_export import brute_front, grid_area, union_volume

TINY = {
    "optim.steps": 6,
    "optim.batch_size": 32,
    "data.n_train": 256,
    "data.n_test": 128,
    "eval.probe_train": 128,
    "eval.max_iter": 20,
    "eval.l2_grid": [0.001],
    "eval.baselines": False,
    "log_every": 3,
}
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def write_study(folder: Path, name: str, **sections: Any) -> Path:
    data = {"name": name, "base": str(STUDIES / "smoke.yaml")}
    data["overrides"] = {**TINY, **sections.pop("overrides", {})}
    data |= sections
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracking store for the module, created once: a fresh MLflow store costs ~5-10 s of
    schema migration here. Every test uses its own study name, hence its own experiment."""
    from jepa_lab.track.store import ensure_store

    home = tmp_path_factory.mktemp("home")
    ensure_store(f"sqlite:///{home / 'mlflow.db'}")
    return home


@pytest.fixture
def home(shared_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE", "JEPA_LAB_WORKER_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JEPA_LAB_HOME", str(shared_home))
    monkeypatch.chdir(tmp_path)
    return shared_home


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jepa_lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def in_process(*args: str) -> Any:
    """The same CLI in this process (export, status, plot: seconds instead of an import)."""
    from jepa_lab.cli.main import app

    return CliRunner().invoke(app, list(args))


def journal(home: Path, name: str) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(home / "studies" / f"{name}.journal")))


def mlflow_runs(home: Path, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return client.search_runs([found.experiment_id], max_results=1000)


def check_consistent(home: Path, storage: Any, name: str, n_trials: int) -> optuna.Study:
    """n_trials COMPLETE trials, unique numbers, one FINISHED MLflow run each, none RUNNING."""
    loaded = optuna.load_study(study_name=name, storage=storage)
    trials = loaded.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == n_trials, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if not t.state.is_finished()]
    runs = mlflow_runs(home, name)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parent = loaded.user_attrs[study_tracking.PARENT]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == len(children) + 1  # one parent, the rest its children
    for trial in done:
        mine = [r for r in children if r.data.tags["jepa_lab.trial"] == str(trial.number)]
        assert [r.info.run_id for r in mine] == [trial.user_attrs[study_tracking.RUN_ID]]
        assert mine[0].info.status == "FINISHED"
        assert mine[0].data.metrics["diag/pred_loss"] == pytest.approx(trial.values[0])
    return loaded


def check_front(loaded: optuna.Study, plan_path: Path, rows: list[dict]) -> float:
    """The exported front is the brute-force non-dominated set of the per-config means."""
    objectives = load_study(plan_path).spec.objectives
    by_config: dict[str, list[list[float]]] = {}
    for trial in loaded.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        by_config.setdefault(trial.user_attrs[study_tracking.A + "config_id"], []).append(
            trial.values
        )
    configs = sorted(by_config)
    means = np.array([np.mean(by_config[c], axis=0) for c in configs])
    directions = [o.direction for o in objectives]
    expected = {configs[i] for i in brute_front(means, directions)}
    assert {row["config_id"] for row in rows} == expected
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    points = np.array([means[configs.index(c)] for c in sorted(expected)]) * signs
    reference = np.array([o.reference for o in objectives]) * signs
    independent = (
        grid_area(points, reference) if len(objectives) == 2 else union_volume(points, reference)
    )
    return independent


# ------------------------------------------------------------------------- study files


@pytest.mark.parametrize(
    "path", sorted(p for p in STUDIES.glob("*.yaml") if is_study_file(p)), ids=lambda p: p.name
)
def test_every_shipped_study_validates(path: Path) -> None:
    plan = load_study(path)
    assert plan.spec.n_trials >= 1 and (plan.spec.grid or plan.spec.search)


def test_study_errors_are_located_at_the_study_files_lines(tmp_path: Path) -> None:
    bad = write_study(
        tmp_path,
        "bad",
        grid={"strategy.kind": ["ema", "magic"]},
        search={
            "sampler": {"kind": "tpe", "seed": 0},
            "n_trials": 4,
            "params": {
                "strategy.kind": {"type": "categorical", "choices": ["ema", "sigreg"]},
                "strategy.lambda": {
                    "type": "float",
                    "low": 0.01,
                    "high": 2.0,
                    "log": True,
                    "when": {"strategy.kind": "sigreg"},
                },
            },
        },
    )
    with pytest.raises(SpecError) as info:
        load_study(bad)
    [message] = info.value.messages  # structure first: a grid value outside the search space
    assert message.startswith(f"{bad}:") and "grid.strategy.kind: ['magic'] outside" in message
    bad = write_study(tmp_path, "bad1", grid={"model.dim": [32, 33]}, seeds=[0, 1])
    with pytest.raises(SpecError) as info:
        load_study(bad)
    line = bad.read_text().splitlines().index("  - 33") + 1  # the grid value itself
    [message] = info.value.messages  # once, though two seeds share the cell
    assert message.startswith(f"{bad}:{line}: model.dim: heads (2) must divide dim (33)")
    assert message.endswith("[grid cell model.dim=33]")
    bad = write_study(
        tmp_path,
        "bad2",
        overrides={"mask.scheme": "random"},
        search={
            "sampler": {"kind": "nsga2", "seed": 0},
            "n_trials": 4,
            "params": {
                "strategy.kind": {"type": "categorical", "choices": ["ema", "sigreg"]},
                "strategy.lambda": {
                    "type": "float",
                    "low": 0.01,
                    "high": 2.0,
                    "log": True,
                    "when": {"strategy.kind": "sigreg"},
                },
                "mask.ratio": {"type": "float", "low": 0.01, "high": 0.5},
            },
        },
    )
    with pytest.raises(SpecError) as info:
        load_study(bad)
    lines = bad.read_text().splitlines()
    # at the bound that makes the bad value, not the parameter's first line
    lambda_at = lines.index("      high: 2.0", lines.index("    strategy.lambda:")) + 1
    ratio_at = lines.index("      low: 0.01", lines.index("    mask.ratio:")) + 1
    messages = "\n".join(info.value.messages)
    lambda_line = f"bad2.yaml:{lambda_at}: strategy.lambda: "
    assert lambda_line + "Input should be less than or equal to 1 (got 2.0)" in messages
    assert f"bad2.yaml:{ratio_at}: mask.ratio: mask.ratio 0.01 on a 4x4 grid" in messages


# ------------------------------------------------------------------------- unit pieces


def test_one_worker_per_gpu_and_cpus_dealt_round_robin() -> None:
    envs = workers.assignments(4, [0, 1, 2, 3], cpus=list(range(16)))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["JEPA_LAB_WORKER_INDEX"] for e in envs] == ["0", "1", "2", "3"]
    assert all("JEPA_LAB_CPUS" not in e for e in envs)
    envs = workers.assignments(4, [2, 5], cpus=list(range(16)))  # two workers share each GPU
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    envs = workers.assignments(2, None, cpus=[0, 1, 2, 3, 4])
    assert [e["JEPA_LAB_CPUS"] for e in envs] == ["0,2,4", "1,3"]
    assert workers.assignments(1, None, cpus=[0, 1]) == [{"JEPA_LAB_WORKER_INDEX": "0"}]
    assert workers.assignments(3, None, cpus=[0]) == [
        {"JEPA_LAB_WORKER_INDEX": str(k), "JEPA_LAB_CPUS": "0"} for k in range(3)
    ]


def test_gpus_are_mapped_through_the_visible_devices() -> None:
    envs = workers.assignments(2, [0, 1], cpus=[0], visible="3,7")  # this process sees GPUs 3, 7
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "7"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0,0"], "distinct GPU indices"),
        (["--gpus", "a"], "expected GPU indices"),
        (["--gpus", "0", "--device", "cpu"], "do not combine it with --device"),
    ],
)
def test_bad_gpu_lists_fail_before_anything_runs(args: list[str], message: str) -> None:
    result = in_process("run", str(STUDIES / "ema_vs_sigreg.yaml"), *args)
    assert result.exit_code == 2 and message in result.output


def test_storage_urls(home: Path) -> None:
    local = resolve_storage(None, f"sqlite:///{home}/mlflow.db", "s")
    assert local == Storage("journal", f"{home}/studies/s.journal")
    pg = resolve_storage("postgresql://u:secret@db:5432/optuna", "http://mlflow:5000", "s")
    assert pg.kind == "postgresql" and pg.heartbeat and "secret" not in pg.shown
    assert resolve_storage("sqlite:///x.db", "", "s").kind == "sqlite"
    with pytest.raises(StudyError, match="not supported"):
        resolve_storage("mysql://u:pw@h/db", "", "s")


def test_worker_liveness_by_pid_and_start_time() -> None:
    assert worker_alive(worker_identity()) is True
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = worker_identity().split(":")[0]
    assert worker_alive(f"{host}:{dead.pid}:1") is False
    assert worker_alive(f"{host}:{os.getpid()}:1") is False  # a reused pid
    assert worker_alive("elsewhere:1:1") is None


def test_a_failing_trial_is_recorded_and_fail_fast_stops(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diverging trial is FAILED with its reason on the Optuna trial and the MLflow run."""
    import jepa_lab.training.loop
    from jepa_lab.track.store import resolve_uri
    from jepa_lab.training.result import TrainResult

    def train(spec: Any, **kwargs: Any) -> Any:  # fast and scripted: the bookkeeping is tested
        if spec.strategy.kind == "sigreg":
            raise jepa_lab.training.loop.NonFiniteError("loss became non-finite at step 3: smoke")
        metrics = {"diag/pred_loss": 0.4, "diag/sigreg_pooled": 9.0, "eval/probe_acc": 0.5}
        dataset = {"name": "synthetic", "digest": "0" * 64, "origin": "generated"}
        return TrainResult(spec, steps=6, metrics=metrics, dataset=dataset)

    monkeypatch.setattr(jepa_lab.training.loop, "train", train)
    path = write_study(tmp_path, "failing", grid={"strategy.kind": ["sigreg", "ema", "none"]})
    plan = load_study(path)
    uri = resolve_uri(None)
    session = study.open_session(plan, resolve_storage(None, uri, plan.name), uri)
    options = WorkerOptions(device="cpu", fail_fast=True)
    outcomes = study.work(session, options, echo=lambda outcome: None)
    assert [(o.number, o.state) for o in outcomes] == [(0, "FAIL")]  # fail-fast: stopped there
    outcomes = study.work(session, WorkerOptions(device="cpu"), echo=lambda o: None)
    assert [o.state for o in outcomes] == ["COMPLETE", "COMPLETE"]  # the study goes on
    trials = session.study.get_trials()
    reason = "non-finite: loss became non-finite at step 3: smoke"
    assert trials[0].user_attrs[study_tracking.ERROR] == reason
    assert trials[0].system_attrs["fail_reason"] == reason  # where Optuna's tools read it
    [run] = [r for r in mlflow_runs(home, "failing") if r.info.run_name == "sigreg-s0"]
    assert run.info.status == "FAILED"
    assert "non-finite at step 3" in run.data.tags["jepa_lab.error"]
    assert study.is_complete(session)
    assert study_results.counts(session) == {"FAIL": 1, "COMPLETE": 2}
    status = in_process("status", str(path))
    assert status.exit_code == 0, status.output
    assert "failed trials (1)" in status.stdout and reason in status.stdout
    out = tmp_path / "all.json"
    assert in_process("export", str(path), "-o", str(out), "--all").exit_code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["trial"], r["state"], r["fail_reason"]) for r in rows if r["state"] == "FAIL"] == [
        (0, "FAIL", reason)
    ]
    assert {"fail_reason", "retry_of", "retried_by"} <= set(rows[0])


def test_study_runs_are_named_described_aggregated_and_keep_checkpoints(
    home: Path, tmp_path: Path
) -> None:
    """Children are named by strategy, differing settings and seed; the study's description is
    the experiment's and the parent's; the parent gets aggregates; children their checkpoint."""
    from mlflow.tracking import MlflowClient

    from jepa_lab.track.store import resolve_uri

    path = write_study(
        tmp_path, "named", description="Does logging more often change anything?",
        grid={"log_every": [3, 2]},
    )  # fmt: skip
    plan = load_study(path)
    uri = resolve_uri(None)
    session = study.open_session(plan, resolve_storage(None, uri, plan.name), uri)
    outcomes = study.work(session, WorkerOptions(device="cpu"), echo=lambda o: None)
    assert [o.state for o in outcomes] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in mlflow_runs(home, "named")}
    assert set(runs) == {"study-named", "ema-s0", "ema-log_every_2-s0"}  # log_every 3 is the base
    parent = runs["study-named"]
    note = "Does logging more often change anything?"
    assert parent.data.tags["mlflow.note.content"] == note
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.note.content"] == note
    assert parent.data.metrics["study/n_complete"] == 2
    best = [t.values[0] for t in session.study.get_trials()]
    assert parent.data.metrics["study/best/diag/pred_loss"] == pytest.approx(min(best))
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "study/n_complete")]
    assert steps == [1, 2]  # logged as each trial finished
    for name in ("ema-s0", "ema-log_every_2-s0"):
        listed = {a.path for a in client.list_artifacts(runs[name].info.run_id, "checkpoint")}
        assert listed == {"checkpoint/checkpoint.pt"}


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_grid_end_to_end_with_seeds_and_every_export(home: Path, tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        "grid",
        overrides={"eval.baselines": True},
        grid={"strategy.kind": ["ema", "sigreg"]},
        seeds=[0, 1],
        objectives=[
            {"metric": "diag/pred_loss", "direction": "minimize", "reference": 2.0},
            {"metric": "diag/sigreg_pooled", "direction": "minimize", "reference": 1200.0},
            {"metric": "eval/probe_acc", "direction": "maximize", "reference": 0.0},
        ],
    )
    done = cli("run", str(path), "--workers", "2", "--precision", "fp32", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[w0]" in done.stderr and "[w1]" in done.stderr  # two local worker processes
    assert "vs random init" in done.stdout and "hypervolume" in done.stdout  # was "p vs random"
    loaded = check_consistent(home, journal(home, "grid"), "grid", 4)
    cells = {
        (t.params["strategy.kind"], t.user_attrs["jepa_lab.seed"]) for t in loaded.get_trials()
    }
    assert cells == {(k, s) for k in ("ema", "sigreg") for s in (0, 1)}
    # --precision reached every worker, was recorded per trial, and one precision is no warning
    assert {t.user_attrs["jepa_lab.precision"] for t in loaded.get_trials()} == {"fp32"}
    assert "different precisions" not in done.stderr
    # the seed is no searched parameter: not in params (nor hyperparameter importance)
    assert not [t for t in loaded.get_trials() if "seed" in t.params]
    assert {t.system_attrs["fixed_params"]["seed"] for t in loaded.get_trials()} == {0, 1}
    assert loaded.metric_names == [
        "prediction error (MSE)",
        "SIGReg statistic, pooled",
        "probe acc.",
    ]

    result = in_process("export", str(path), "--format", "json", "-o", str(tmp_path / "f.json"))
    assert result.exit_code == 0, result.output
    exported = json.loads((tmp_path / "f.json").read_text())
    independent = check_front(loaded, path, exported["rows"])
    assert exported["hypervolume"] == pytest.approx(independent, rel=1e-9)
    assert exported["reference_point"] == [2.0, 1200.0, 0.0]
    row = exported["rows"][0]
    assert row["n"] == 2 and len(row["mlflow_run_id"].split(",")) == 2
    assert {
        "diag/pred_loss (min)",
        "diag/pred_loss (min) std",
        "eval/random_probe_acc",
        "eval/pixel_probe_acc",
        "p_vs_random",
        "state",
    } <= set(row)
    for fmt in ("csv", "md", "latex", "parquet"):
        out = tmp_path / f"front.{fmt}"
        result = in_process("export", str(path), "--format", fmt, "-o", str(out), "--all")
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 100
        assert f"hypervolume {independent:.6g}" in result.stdout
    for name in ("pareto.png", "pareto.html"):
        assert in_process("plot", str(path), "-o", str(tmp_path / name)).exit_code == 0
    drift = in_process("plot", str(path), "--kind", "drift", "-o", str(tmp_path / "d.png"))
    assert drift.exit_code == 2 and "no run logged drift" in drift.output  # an image study
    assert not (tmp_path / "d.png").exists()
    status = in_process("status", str(path))
    assert "COMPLETE        4" in status.stdout and "hypervolume" in status.stdout
    again = in_process("run", str(path), "--no-progress")  # complete: nothing runs again
    assert again.exit_code == 0 and "already complete" in again.output
    check_consistent(home, journal(home, "grid"), "grid", 4)
    parent = [r for r in mlflow_runs(home, "grid") if r.info.run_name == "study-grid"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(parent[0].info.run_id, "study")}
    assert {"study/pareto.csv", "study/pareto.png", "study/pareto.html", "study/grid.yaml"} <= names
    assert not [k for k, v in parent[0].data.params.items() if "/" in v and str(home) in v]


# The shipped world study, shrunk to seconds: 2 strategies x 2 seeds, two training steps,
# 30-step rollouts on 8 trajectories, 2 planning episodes per task. Two steps leave BatchNorm's
# running variance near its initial 1, so the embeddings' spread is tiny (~1e-7 per dim): the
# collapse threshold goes below it, so the drift is finite and the plot has curves to draw.
WORLD_TINY = {
    "data.trajectories": 32,
    "optim.batch_size": 16,
    "optim.epochs": 1,
    "model.channels": 4,
    "model.latent": 8,
    "model.projector_hidden": 16,
    "model.pred_hidden": 16,
    "strategy.directions": 8,
    "eval.trajectories": 8,
    "eval.probe_frames": 64,
    "eval.collapse_threshold": 1e-12,
    "correction.bank_trajectories": 4,
    "planning.episodes": 2,
    "planning.samples": 8,
    "planning.elites": 2,
    "planning.iterations": 1,
    "planning.horizon": 2,
    "planning.max_steps": 4,
    "planning.replan_every": 2,
    "planning.baselines": False,
}


def test_a_world_study_runs_exports_and_plots_its_drift(home: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((STUDIES / "wm_drift.yaml").read_text())
    data |= {
        "name": "wm_tiny",
        "base": str(STUDIES / data["base"]),
        "overrides": {**data["overrides"], **WORLD_TINY},
        "grid": {"strategy.kind": ["sigreg", "none"], "loss.rollout_steps": [2]},
        "seeds": [0, 1],
    }
    path = tmp_path / "wm_tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = cli("run", str(path), "--no-progress", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = optuna.load_study(study_name="wm_tiny", storage=journal(home, "wm_tiny"))
    complete = loaded.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == len(loaded.get_trials()) == 4
    for trial in complete:
        metrics = trial.user_attrs["jepa_lab.metrics"]
        assert metrics["data/crossing_share"] > 0 and "drift/nmse_k30/knn" in metrics
    # the summary a world study ends with: planning and drift, not the image probe's columns
    summary = done.stdout.replace("\n", " ")
    assert "cross cem" in summary and "NMSE k=30" in summary and "probe (test)" not in summary
    assert "knn std" not in summary  # one column per quantity, its CI inside the cell

    out = tmp_path / "wm.json"
    result = in_process("export", str(path), "--format", "json", "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["strategy"] for r in rows) == ["none", "sigreg"]
    assert all(r["n"] == 2 and r["loss.rollout_steps"] == 2 for r in rows)
    for metric in ("drift/nmse_k30/knn", "plan/test/cross/receding/cem/success", "diag/collapsed"):
        assert all(metric in r and f"{metric} lo" in r for r in rows), metric
    markdown = tmp_path / "wm.md"
    assert in_process("export", str(path), "-f", "md", "-o", str(markdown)).exit_code == 0
    assert "NMSE at k = 30, knn" in markdown.read_text()
    assert "success, cross-room, cem, receding (%)" in markdown.read_text()
    for name in ("drift.png", "drift.html"):
        result = in_process("plot", str(path), "--kind", "drift", "-o", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).stat().st_size > 1000
    from mlflow.tracking import MlflowClient  # what the drift plot reads: horizon as the step

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    children = [r for r in mlflow_runs(home, "wm_tiny") if "drift/nmse/knn" in r.data.metrics]
    assert len(children) == 4
    history = client.get_metric_history(children[0].info.run_id, "drift/nmse/knn")
    assert sorted(m.step for m in history) == list(range(1, 31))


def search_study(tmp_path: Path, name: str, n_trials: int) -> Path:
    return write_study(
        tmp_path,
        name,
        overrides={"mask.scheme": "random"},
        search={
            "sampler": {"kind": "nsga2", "seed": 3, "population_size": 2},
            "n_trials": n_trials,
            "params": {
                "strategy.kind": {"type": "categorical", "choices": ["sigreg", "ema"]},
                "strategy.lambda": {
                    "type": "float",
                    "low": 0.01,
                    "high": 0.5,
                    "log": True,
                    "when": {"strategy.kind": "sigreg"},
                },
                "mask.ratio": {"type": "float", "low": 0.3, "high": 0.7},
            },
        },
    )


def check_search(home: Path, storage: Any, path: Path, n_trials: int, exported: dict) -> None:
    loaded = check_consistent(home, storage, path.stem, n_trials)
    independent = check_front(loaded, path, exported["rows"])
    assert exported["hypervolume"] == pytest.approx(independent, rel=1e-9)
    best = {t.number for t in loaded.best_trials}
    assert {row["trial"] for row in exported["rows"]} <= best  # Optuna's front, deduplicated
    for trial in loaded.get_trials():  # the SIGReg weight exists only for sigreg trials
        assert ("strategy.lambda" in trial.params) == (trial.params["strategy.kind"] == "sigreg")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    """A throwaway PostgreSQL database (dropped afterwards); where no server answers on
    127.0.0.1:5432, a SQLite database, so the search still runs end to end on a shared RDB."""
    import psycopg2

    try:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except psycopg2.OperationalError:
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    admin.autocommit = True
    name = f"jepa_lab_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.mark.slow
def test_search_with_two_workers_on_postgresql(home: Path, tmp_path: Path, database: str) -> None:
    path = search_study(tmp_path, "pgsearch", 4)
    done = cli("run", str(path), "--workers", "2", "--storage", database, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    result = in_process("export", str(path), "-f", "json", "--storage", database)
    assert result.exit_code == 0, result.output
    storage = resolve_storage(database, "", "pgsearch").url
    check_search(home, storage, path, 4, json.loads(result.stdout))


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_without_duplicates(
    home: Path, tmp_path: Path
) -> None:
    path = write_study(
        tmp_path,
        "killed",
        overrides={"optim.steps": 120},  # a few seconds a trial: long enough to be caught
        grid={"strategy.kind": ["ema", "sigreg", "none"]},
    )
    command = [sys.executable, "-m", "jepa_lab", "run", str(path), "--no-progress"]
    proc = subprocess.Popen(
        command,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline, killed_at = time.monotonic() + 180, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not (home / "studies" / "killed.journal").exists():
                continue
            try:
                storage = journal(home, "killed")
                trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
            except KeyError:  # not created yet
                continue
            running = [
                t
                for t in trials
                if t.state.name == "RUNNING" and study_tracking.RUN_ID in t.user_attrs
            ]
            if any(t.state.name == "COMPLETE" for t in trials) and running:
                time.sleep(0.5)  # inside the trial: its MLflow run is open
                again = optuna.load_study(study_name="killed", storage=storage)
                if again.get_trials()[running[0].number].state.name == "RUNNING":
                    killed_at = running[0].number
                    break  # else it finished meanwhile: wait for the next one
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_at is not None, "no trial was seen running"
    storage = journal(home, "killed")
    before = optuna.load_study(study_name="killed", storage=storage).get_trials()
    completed_before = {t.number: t.values for t in before if t.state.name == "COMPLETE"}
    assert [t.number for t in before if t.state.name == "RUNNING"] == [killed_at]

    done = cli("run", str(path), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = check_consistent(home, storage, "killed", 3)
    trials = loaded.get_trials()
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["strategy.kind"] for t in completed) == ["ema", "none", "sigreg"]
    for number, values in completed_before.items():  # not run again
        assert trials[number].values == values
    [failed] = [t for t in trials if t.state.name == "FAIL"]
    assert failed.number == killed_at and "died" in failed.user_attrs[study_tracking.ERROR]
    [retry] = [t for t in trials if t.user_attrs.get(study_tracking.RETRY_OF) == killed_at]
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    # where Optuna's own tooling reads them: the reason, and its retry callback's keys
    assert failed.system_attrs["fail_reason"].startswith("worker died: ")
    assert f"retried as trial {retry.number}" in failed.system_attrs["fail_reason"]
    assert failed.user_attrs[study_tracking.RETRIED_BY] == retry.number
    assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(retry) == killed_at
    status = in_process("status", str(path))
    assert "worker died: " in status.stdout and "failed trials (1)" in status.stdout
    runs = mlflow_runs(home, "killed")
    [killed_run] = [r for r in runs if r.data.tags.get("jepa_lab.trial") == str(killed_at)]
    assert killed_run.info.status == "KILLED" and "died" in killed_run.data.tags["jepa_lab.error"]
    assert len(runs) == 1 + 3 + 1  # parent, one per completed trial, the killed one
    assert not list((home / "studies").glob("*.lock"))  # no Optuna lock file to wait out


def test_a_storm_of_sigkills_then_one_run_finishes_the_study_cleanly(tmp_path: Path) -> None:
    """bench/storm.py at CI size: 3 SIGKILLs of the whole process group of `jepa-lab run`, at
    seeded moments in its first seconds (the first ones while the stores are created), on a
    fresh store and a 3-cell grid; then one run must exit 0 and leave the study clean."""
    out = tmp_path / "storm.json"
    command = [sys.executable, str(REPO / "bench" / "storm.py"), "--kills", "3", "--cells", "3",
               "--window", "0.5", "5", "--steps", "12", "--seed", "1", "--no-rerun",
               "--timeout", "200", "--json", str(out)]  # fmt: skip
    storm = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = storm.communicate(timeout=300)
    finally:  # a storm past its time leaves no `jepa-lab run` behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(storm.pid, signal.SIGKILL)
    assert out.exists(), stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["kills"] + len(report["ended_before_kill"]) == 3
    assert report["final_exit_code"] == 0, report["final_stderr_tail"]
    assert report["complete"] == 3 and report["duplicates"] == 0, report
    assert report["optuna_running_left"] == 0 and report["mlflow_running_left"] == 0, report
    assert report["orphan_runs"] == 0 and report["surviving_processes"] == 0, report
    assert report["lock_files"] == 0 and report["fail_reasons_missing"] == 0, report
    assert storm.returncode == 0 and "verdict" in stdout
