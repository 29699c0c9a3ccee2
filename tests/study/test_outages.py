"""Outages that must lose no data: the study's PostgreSQL server restarted (or gone for longer
than the workers wait), the MLflow tracking server restarted (or gone), and a full disk.

Real components only: a throwaway PostgreSQL cluster this module starts with ``initdb`` and
``pg_ctl`` on a free loopback port (the machine's own server is left alone), a real
``mlflow server`` on loopback, a small tmpfs. Each server is stopped by its PID or its data
directory at teardown.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_study import write_study

RUN_ID = "jepa_lab.mlflow_run_id"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def jepa_lab(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jepa_lab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@contextlib.contextmanager
def reaped(*processes: subprocess.Popen[str]) -> Iterator[None]:
    """Kill (by process group) what still runs when the block ends, even on a failure."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local tracking store for the module (a fresh one costs seconds of migration)."""
    from jepa_lab.track.store import ensure_store

    home = tmp_path_factory.mktemp("home")
    ensure_store(f"sqlite:///{home / 'mlflow.db'}")
    return home


def environment(home: Path, **extra: str) -> dict[str, str]:
    drop = ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE", "JEPA_LAB_WORKER_INDEX", "JEPA_LAB_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"JEPA_LAB_HOME": str(home)} | extra


# --------------------------------------------------------------------------- PostgreSQL


class Cluster:
    """A throwaway PostgreSQL cluster in ``root``, run as the ``postgres`` user when root."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [
            shutil.which("pg_ctl") or ""
        ]
        if not found[-1] or not os.path.exists(found[-1]):
            pytest.skip("no pg_ctl here")
        self.bin = Path(found[-1]).parent
        self.root, self.data, self.port = root, root / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        connection = psycopg2.connect(self.url, connect_timeout=3)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # not under pytest's tmp folder: the postgres user cannot enter root's 0700 folders
    root = Path(tempfile.mkdtemp(prefix="jepa-lab-pg-"))
    try:
        cluster = Cluster(root)
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def states(cluster: Cluster) -> dict[str, int]:
    """Trial counts by state, straight from the database (no Optuna, no retries)."""
    try:
        return dict(cluster.query("SELECT state, count(*) FROM trials GROUP BY state"))
    except Exception:  # not created yet, or the server is down
        return {}


def running_in_training(cluster: Cluster) -> list[int]:
    """Trials RUNNING with their MLflow run open (inside training)."""
    try:
        rows = cluster.query(
            "SELECT t.number FROM trials t JOIN trial_user_attributes a "
            f"ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = '{RUN_ID}'"
        )
    except Exception:
        return []
    return [row[0] for row in rows]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def check_study(cluster: Cluster, n: int) -> None:
    """Exactly ``n`` COMPLETE trials, none RUNNING or WAITING, no parameter vector twice."""
    from collections import Counter

    counts = states(cluster)
    assert counts.get("COMPLETE") == n, counts
    assert not counts.get("RUNNING") and not counts.get("WAITING"), counts
    rows = cluster.query(
        "SELECT t.number, p.param_name, p.param_value FROM trials t "
        "JOIN trial_params p ON p.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
    )
    # the seed is a fixed grid value (a user attribute), not a searched parameter
    seeds = cluster.query(
        "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
        "ON a.trial_id = t.trial_id WHERE t.state = 'COMPLETE' AND a.key = 'jepa_lab.seed'"
    )
    vectors: dict[int, list[tuple[str, Any]]] = {}
    for number, name, value in rows:
        vectors.setdefault(number, []).append((name, value))
    for number, seed in seeds:
        vectors.setdefault(number, []).append(("seed", seed))
    seen = Counter(tuple(sorted(v)) for v in vectors.values())
    assert len(vectors) == n and max(seen.values()) == 1, seen


@pytest.mark.slow
def test_postgresql_restarted_mid_trial_two_workers_finish_the_study(
    home: Path, tmp_path: Path, cluster: Cluster
) -> None:
    path = write_study(
        tmp_path,
        "pgrestart",
        overrides={"optim.steps": 40},
        grid={"strategy.kind": ["ema", "sigreg"]},
        seeds=[0, 1],
    )
    env = environment(home, JEPA_LAB_DB_RETRY_S="60")
    proc = jepa_lab("run", str(path), "--workers", "2", "--storage", cluster.url,
                    "--no-progress", env=env)  # fmt: skip
    with reaped(proc):
        wait_for(lambda: running_in_training(cluster), 120, "a trial in training")
        began = time.monotonic()
        cluster.stop("fast")  # every connection dies
        time.sleep(2.0)  # the workers meet the outage (heartbeats, the parent's polling)
        cluster.start()
        downtime = time.monotonic() - began
        _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    check_study(cluster, 4)
    assert "Traceback" not in err
    recovered = [float(s) for s in re.findall(r"reconnected after ([\d.]+) s", err)]
    retries = [int(s) for s in re.findall(r"\((\d+) retries\)", err)]
    print(f"\ndowntime {downtime:.1f} s; reconnections {recovered} s; retries {retries}")


@pytest.mark.slow
def test_postgresql_down_past_the_limit_the_worker_exits_and_a_fresh_one_finishes(
    home: Path, tmp_path: Path, cluster: Cluster
) -> None:
    path = write_study(
        tmp_path, "pgdown", overrides={"optim.steps": 60}, grid={"strategy.kind": ["ema", "none"]}
    )
    env = environment(home, JEPA_LAB_DB_RETRY_S="3", JEPA_LAB_STORAGE=cluster.url)
    worker = jepa_lab("worker", str(path), env=env)
    with reaped(worker):
        wait_for(lambda: running_in_training(cluster), 120, "a trial in training")
        [stranded] = running_in_training(cluster)
        cluster.stop("fast")
        began = time.monotonic()
        _out, err = worker.communicate(timeout=120)
        gave_up = time.monotonic() - began
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert worker.returncode == 2, err[-3000:]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert "unreachable for" in lines[0] and "JEPA_LAB_DB_RETRY_S" in lines[0], lines
    assert "secret" not in err
    cluster.start()
    assert states(cluster).get("RUNNING") == 1  # left to the reaper / heartbeat
    fresh = jepa_lab("worker", str(path), env=env)
    with reaped(fresh):
        _out, err = fresh.communicate(timeout=180)
    assert fresh.returncode == 0, err[-3000:]
    check_study(cluster, 2)
    [(reason,)] = cluster.query(
        "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = "
        f"t.trial_id WHERE t.number = {stranded} AND a.key = 'jepa_lab.error'"
    )
    assert "retried" in reason
    print(f"\nworker gave up {gave_up:.1f} s after the server stopped (limit 3 s): {lines[0]}")


def test_connection_errors_are_retried_with_backoff_then_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlalchemy.exc

    from jepa_lab.study.storage import StorageUnreachable, retrying

    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError("connection refused"))
        return "ok"

    monkeypatch.setenv("JEPA_LAB_DB_RETRY_S", "30")
    assert retrying(flaky, "postgresql://u@h/db") == "ok" and len(calls) == 3
    assert calls[2] - calls[1] > calls[1] - calls[0]  # backoff

    def broken() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError("connection refused"))

    monkeypatch.setenv("JEPA_LAB_DB_RETRY_S", "0.6")
    with pytest.raises(StorageUnreachable, match=r"unreachable for .*JEPA_LAB_DB_RETRY_S"):
        retrying(broken, "postgresql://u@h/db")

    def wrong() -> None:  # not a connection error: no retry
        calls.append(0)
        raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate"))

    calls.clear()
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        retrying(wrong, "postgresql://u@h/db")
    assert len(calls) == 1


# ------------------------------------------------------------------------ MLflow server


class MlflowServer:
    """A real ``mlflow server`` (SQLite backend in ``root``) on a fixed loopback port, which the
    test stops and starts again; always stopped by its process group's id."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; the seconds until /health answered."""
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root", "mlflow-artifacts:/",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        began = time.monotonic()
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        while True:
            assert self.process.poll() is None, (self.root / "server.log").read_text()[-2000:]
            assert time.monotonic() - began < 120, "mlflow server did not start in 120 s"
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
                return time.monotonic() - began
            except OSError:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # anything left in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def served_runs(url: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def open_trial_runs(url: str, experiment: str) -> list[Any]:
    try:
        runs = served_runs(url, experiment)
    except Exception:  # the server is starting or down
        return []
    return [r for r in runs if r.info.status == "RUNNING" and "jepa_lab.trial" in r.data.tags]


def study_trials(home: Path, name: str) -> list[Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(home / "studies" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def check_one_finished_run_per_trial(home: Path, url: str, name: str, n: int) -> None:
    trials = study_trials(home, name)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n and not [t for t in trials if t.state.name == "RUNNING"]
    runs = [r for r in served_runs(url, name) if "jepa_lab.trial" in r.data.tags]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for trial in complete:
        mine = [r for r in runs if r.data.tags["jepa_lab.trial"] == str(trial.number)]
        [run] = [r for r in mine if r.info.status == "FINISHED"]
        assert run.info.run_id == trial.user_attrs[RUN_ID]
        assert "eval/probe_acc" in run.data.metrics and "train/loss" in run.data.metrics


@pytest.mark.slow
def test_mlflow_server_restarted_mid_trial_loses_no_run(
    home: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    path = write_study(
        tmp_path,
        "mlrestart",
        overrides={"optim.steps": 60},
        grid={"strategy.kind": ["ema", "none"]},
    )
    env = environment(home, JEPA_LAB_TRACKING_RETRY_S="120")
    proc = jepa_lab("run", str(path), "--tracking-uri", mlflow_server.url, "--no-progress", env=env)
    with reaped(proc):
        wait_for(lambda: open_trial_runs(mlflow_server.url, "mlrestart"), 120, "a trial run")
        mlflow_server.stop()
        time.sleep(2.0)
        restart = mlflow_server.start()
        _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    check_one_finished_run_per_trial(home, mlflow_server.url, "mlrestart", 2)
    answered = [float(s) for s in re.findall(r"answered again after ([\d.]+) s", err)]
    retries = [int(s) for s in re.findall(r"\((\d+) retries\)", err)]
    print(f"\nserver restart took {restart:.1f} s; answered again after {answered} s; {retries}")


@pytest.mark.slow
def test_mlflow_server_down_past_the_limit_fails_the_trial_and_the_study_resumes(
    home: Path, tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    path = write_study(
        tmp_path, "mldown", overrides={"optim.steps": 60}, grid={"strategy.kind": ["ema", "none"]}
    )
    env = environment(home, JEPA_LAB_TRACKING_RETRY_S="3")
    args = ["run", str(path), "--tracking-uri", mlflow_server.url, "--no-progress"]
    proc = jepa_lab(*args, env=env)
    with reaped(proc):
        wait_for(lambda: open_trial_runs(mlflow_server.url, "mldown"), 120, "a trial run")
        mlflow_server.stop()
        _out, err = proc.communicate(timeout=180)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and "unreachable" in lines[0], err[-3000:]
    [failed] = [t for t in study_trials(home, "mldown") if t.state.name == "FAIL"]
    assert "tracking server" in failed.user_attrs["jepa_lab.error"]
    mlflow_server.start()
    again = jepa_lab(*args, env=env)
    with reaped(again):
        _out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    check_one_finished_run_per_trial(home, mlflow_server.url, "mldown", 2)
    print(f"\nthe trial failed with: {failed.user_attrs['jepa_lab.error']}")


# ---------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs (root may mount; elsewhere the test is skipped), unmounted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="jepa-lab-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # busy: a log handle
        folder.rmdir()


def fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte."""
    with open(disk / "filler", "ab") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


@pytest.mark.slow
def test_a_full_disk_keeps_the_good_checkpoint_and_the_journal_readable(
    small_disk: Path, smoke_path: Path
) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from typer.testing import CliRunner

    from jepa_lab.cli.main import app
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.spec.load import load
    from jepa_lab.training.checkpoint import read_checkpoint
    from jepa_lab.training.loop import TrainOptions, train

    sets = ["optim.steps=2", "eval.baselines=false", "log_every=1"]
    run_dir = small_disk / "run"
    spec = load(ExperimentSpec, smoke_path, sets)
    train(spec, options=TrainOptions(run_dir=run_dir, device="cpu", stop_at=1))
    good = (run_dir / "checkpoint.pt").read_bytes()
    journal = str(small_disk / "study.journal")
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(journal)))
    study.enqueue_trial({"x": 1.0})
    fill(small_disk)

    args = ["train", str(smoke_path), *[a for s in sets for a in ("--set", s)], "--run-dir",
            str(run_dir), "--resume", "--no-track", "--no-progress", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "could not write checkpoint" in lines[-1] and "previous checkpoint is kept" in lines[-1]
    assert (run_dir / "checkpoint.pt").read_bytes() == good  # not replaced by a partial one
    assert read_checkpoint(run_dir / "checkpoint.pt")["step"] == 1
    assert not list(run_dir.glob("*.partial"))

    fill(small_disk)  # the failed checkpoint freed its partial file
    with contextlib.suppress(OSError):  # a line fails, or fits in the file's last page
        study.enqueue_trial({"x": 2.0})
    (small_disk / "filler").unlink()
    reread = optuna.load_study(study_name=study.study_name, storage=JournalStorage(
        JournalFileBackend(journal)))  # fmt: skip
    assert len(reread.get_trials()) in (1, 2)  # the journal stays readable
    print(f"\nthe full disk gave: {lines[-1]}")
