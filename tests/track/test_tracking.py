"""MLflow tracking against real components: a real ``mlflow server`` over HTTP and real SQLite
stores, driven through the real CLI, read back through MLflow's REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import STUDIES

SMOKE = str(STUDIES / "smoke.yaml")
FAST = ["--set", "optim.steps=10", "--set", "eval.baselines=false", "--set", "eval.max_iter=20",
        "--no-progress"]  # fmt: skip

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "JEPA_LAB_HOME")}
    return env | extra


def default_sigint() -> None:
    """Children get Python's Ctrl-C handling even if this process was started ignoring SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def jepa_lab(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jepa_lab", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        preexec_fn=default_sigint,
    )  # fmt: skip


@contextlib.contextmanager
def reaped(*processes: subprocess.Popen[str]) -> Iterator[None]:
    """Kill what is still running when the block ends, even on a failed assertion."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def rest(url: str, endpoint: str, **query: str) -> Any:
    address = f"{url}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(address, timeout=30) as response:
        body = response.read()
    return json.loads(body) if endpoint.startswith("/api/") else body.decode()


def search_runs(url: str, experiment: str) -> list[dict[str, Any]]:
    experiment_id = rest(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment)
    body = json.dumps({"experiment_ids": [experiment_id["experiment"]["experiment_id"]]}).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(json.loads(response.read()).get("runs", []))


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    rows = rest(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key)
    return [(int(m["step"]), m["value"]) for m in rows["metrics"]]


def artifacts(url: str, run_id: str, path: str = "") -> set[str]:
    listing = rest(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path)
    return {f["path"] for f in listing.get("files", [])}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, in its own process group."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", "mlflow-artifacts:/",  # proxied: clients upload over HTTP
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.25)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # anything left in the group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def served_run(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny training logged to the server through the CLI: its result.json and run id."""
    work = tmp_path_factory.mktemp("served")
    env = cli_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    args = ["train", SMOKE, *FAST, "--tracking-uri", server, "--experiment", "e2e",
            "--run-dir", str(work / "run"), "--json", str(work / "result.json")]  # fmt: skip
    code, out, err = finish(jepa_lab(*args, env=env, cwd=work))
    assert code == 0, err[-3000:]
    runs = search_runs(server, "e2e")
    assert len(runs) == 1
    result = json.loads((work / "result.json").read_text())
    run_id = runs[0]["info"]["run_id"]
    return {"run_id": run_id, "result": result, "stdout": out, "run_dir": work / "run"}


def test_a_served_run_has_params_tags_metrics_artifacts_and_dataset(
    server: str, served_run: dict[str, Any]
) -> None:
    run_id, result = served_run["run_id"], served_run["result"]
    assert run_id in served_run["stdout"]  # the CLI prints the run's URL
    run = rest(server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "smoke-ema-s0"  # spec name, strategy, seed

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["optim.steps"] == "10" and params["strategy.kind"] == "ema"
    assert params["data.name"] == "synthetic" and params["model.dim"] == "32"
    assert params["eval.probe_train"] == "null" and params["optim.betas"] == "[0.9, 0.999]"
    assert not any("/" in value for value in params.values())  # no host paths

    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["jepa_lab.strategy"] == "ema"
    assert tags["jepa_lab.spec_digest"] == result["spec_digest"]
    assert tags["jepa_lab.config_id"] == result["config_id"] != result["spec_digest"]
    assert tags["jepa_lab.seed"] == "0"
    assert tags["jepa_lab.git_dirty"] in ("true", "false", "none")
    if result["provenance"]["git_commit"]:
        assert tags["jepa_lab.git_commit"] == result["provenance"]["git_commit"]
        assert tags["mlflow.source.git.commit"] == result["provenance"]["git_commit"]
    for package in ("jepa_lab", "torch", "timm"):
        assert tags[f"jepa_lab.version.{package}"] not in ("", "unknown")
    assert tags["jepa_lab.device_name"] == result["provenance"]["device_name"]
    from jepa_lab.training.precision import cpu_has_native_bf16

    auto = "bf16" if cpu_has_native_bf16() else "fp32"  # the default, auto, on this CPU
    assert tags["jepa_lab.precision"] == result["provenance"]["precision"] == auto

    # log_every=5 in smoke.yaml: training metrics at steps 5 and 10, evaluation at the end.
    for key in ("train/loss", "train/loss_pred", "train/loss_reg", "train/lr", "train/momentum",
                "train/images_per_second"):  # fmt: skip
        logged = history(server, run_id, key)
        assert [step for step, _ in logged] == [5, 10], key
        assert [value for _, value in logged] == pytest.approx(
            [row[key] for row in result["history"]], rel=1e-6
        )
    for key, value in result["metrics"].items():
        assert history(server, run_id, key) == [(10, pytest.approx(value, rel=1e-6))], key
    latest = {m["key"] for m in run["data"]["metrics"]}
    assert "system/cpu_utilization_percentage" in latest
    assert "system/system_memory_usage_megabytes" in latest

    root = artifacts(server, run_id)
    assert {"spec.yaml", "result.json", "checkpoint", "plots"} <= root
    assert artifacts(server, run_id, "checkpoint") == {"checkpoint/checkpoint.pt"}
    assert artifacts(server, run_id, "plots") == {"plots/curves.png"}
    spec = yaml.safe_load(rest(server, "/get-artifact", path="spec.yaml", run_uuid=run_id))
    assert spec == result["spec"]

    (data,) = run["inputs"]["dataset_inputs"]
    assert data["dataset"]["name"] == "synthetic"
    profile = json.loads(data["dataset"]["profile"])
    assert (profile["train_images"], profile["test_images"]) == (512, 256)
    assert profile["digest"].startswith(data["dataset"]["digest"])
    assert {"key": "mlflow.data.context", "value": "training"} in data["tags"]


def test_parent_and_child_runs_nest_and_failures_are_recorded(server: str) -> None:
    from jepa_lab.track.store import prepare_store
    from jepa_lab.track.writer import tracked_run

    experiment_id = prepare_store(server, "nested")
    assert prepare_store(server, "nested") == experiment_id  # idempotent
    with tracked_run(server, experiment_id, "study", system_metrics=False) as parent:
        parent.set_tags({"jepa_lab.study": "demo"})
        for trial in range(2):
            with tracked_run(
                server, experiment_id, f"trial-{trial}", parent_run_id=parent.run_id,
                tags={"jepa_lab.trial": str(trial)}, system_metrics=False,
            ) as child:  # fmt: skip
                for step in (1, 2, 3):
                    child.log({"train/loss": 1.0 / (step + trial)}, step)
        with (
            pytest.raises(ValueError, match="boom"),
            tracked_run(
                server, experiment_id, "broken", parent_run_id=parent.run_id, system_metrics=False
            ),
        ):
            raise ValueError("boom\nsecond line")
    runs = {r["info"]["run_name"]: r for r in search_runs(server, "nested")}
    assert set(runs) == {"study", "trial-0", "trial-1", "broken"}
    parent_id = runs["study"]["info"]["run_id"]
    assert runs["study"]["info"]["status"] == "FINISHED"
    for name in ("trial-0", "trial-1", "broken"):
        tags = {t["key"]: t["value"] for t in runs[name]["data"]["tags"]}
        assert tags["mlflow.parentRunId"] == parent_id
    child_id = runs["trial-1"]["info"]["run_id"]
    assert runs["trial-1"]["info"]["status"] == "FINISHED"
    assert history(server, child_id, "train/loss") == [(1, 0.5), (2, 1 / 3), (3, 0.25)]
    broken = runs["broken"]
    assert broken["info"]["status"] == "FAILED"
    tags = {t["key"]: t["value"] for t in broken["data"]["tags"]}
    assert tags["jepa_lab.error"] == "boom second line"


def test_from_run_reproduces_the_spec_and_an_interrupt_ends_killed(
    server: str, served_run: dict[str, Any], tmp_path: Path
) -> None:
    env = cli_env()
    again = jepa_lab(
        "train", "--from-run", served_run["run_id"], "--tracking-uri", server, "--no-progress",
        "--experiment", "again", "--run-dir", str(tmp_path / "again"),
        "--json", str(tmp_path / "again.json"), env=env, cwd=tmp_path,
    )  # fmt: skip
    # Meanwhile: a long run, interrupted with Ctrl-C once it has started training.
    run_dir = tmp_path / "long"
    long = jepa_lab(
        "train", SMOKE, "--set", "optim.steps=100000", "--set", "eval.baselines=false",
        "--no-progress", "--checkpoint-every", "1", "--tracking-uri", server,
        "--experiment", "interrupted", "--run-dir", str(run_dir), env=env, cwd=tmp_path,
    )  # fmt: skip
    with reaped(again, long):
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert long.poll() is None, long.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start in 120 s"
            time.sleep(0.2)
        long.send_signal(signal.SIGINT)
        code, _, err = finish(long, timeout=60)
        assert code == 130, err[-3000:]
        code, _, again_err = finish(again)
        assert code == 0, again_err[-3000:]
    (killed,) = search_runs(server, "interrupted")
    assert killed["info"]["status"] == "KILLED"
    assert killed["info"]["run_id"] in err and "KILLED" in err
    assert "continue with: jepa-lab train" in err and err.strip().endswith("--resume"), err
    tags = {t["key"]: t["value"] for t in killed["data"]["tags"]}
    assert tags["jepa_lab.stopped_by"] == "KeyboardInterrupt"

    digest = served_run["result"]["spec_digest"]
    assert json.loads((tmp_path / "again.json").read_text())["spec_digest"] == digest
    (rerun,) = search_runs(server, "again")
    tags = {t["key"]: t["value"] for t in rerun["data"]["tags"]}
    assert tags["jepa_lab.spec_digest"] == digest
    assert tags["jepa_lab.from_run"] == served_run["run_id"]


def test_an_unreachable_server_fails_fast_before_training(tmp_path: Path) -> None:
    began = time.monotonic()
    process = jepa_lab(
        "train", SMOKE, *FAST, "--tracking-uri", "http://127.0.0.1:9",
        "--run-dir", str(tmp_path / "run"), env=cli_env(), cwd=tmp_path,
    )  # fmt: skip
    code, out, err = finish(process, timeout=60)
    assert time.monotonic() - began < 10
    assert code == 2
    assert err.startswith("error: tracking server http://127.0.0.1:9 does not answer")
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "run").exists()


def test_two_processes_on_a_fresh_local_store_both_land_and_the_ui_serves_them(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = cli_env(JEPA_LAB_HOME=str(home))
    processes = []
    for seed in (1, 2):
        run_dir = str(tmp_path / f"run{seed}")
        args = ["train", SMOKE, *FAST, "--set", f"seed={seed}", "--run-dir", run_dir]
        processes.append(jepa_lab(*args, env=env, cwd=tmp_path))
    for process in processes:
        code, _, err = finish(process)
        assert code == 0, err[-3000:]
    assert sorted(p.name for p in home.iterdir()) == [".mlflow.db.lock", "artifacts", "mlflow.db"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    assert experiment.artifact_location == (home / "artifacts" / "smoke").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["jepa_lab.seed"] for r in runs) == ["1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert run.info.artifact_uri.startswith((home / "artifacts" / "smoke").as_uri())
        assert "eval/probe_acc" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [5, 10]

    from typer.testing import CliRunner

    from jepa_lab.cli.main import app

    local = {"JEPA_LAB_HOME": str(home), "MLFLOW_TRACKING_URI": None}
    listed = CliRunner().invoke(app, ["runs", "list", "--experiment", "smoke"], env=local)
    assert listed.exit_code == 0, listed.output
    assert all(run.info.run_id in listed.output for run in runs)
    assert listed.output.count("FINISHED") == 2 and "ema" in listed.output

    # `jepa-lab ui` serves the same store; Ctrl-C stops the server's whole process group.
    port = free_port()
    ui = jepa_lab("ui", "--port", str(port), env=env, cwd=tmp_path)
    with reaped(ui):
        assert ui.stdout is not None
        line = ui.stdout.readline()  # printed once the server answers
        url = f"http://127.0.0.1:{port}"
        assert line.startswith(f"MLflow UI: {url}"), line + ui.communicate()[1]
        served = {r["info"]["run_id"] for r in search_runs(url, "smoke")}
        assert served == {run.info.run_id for run in runs}
        children = subprocess.run(["pgrep", "-P", str(ui.pid)], capture_output=True, text=True)
        server_group = int(children.stdout)  # the ui's one child, leading its own process group
        ui.send_signal(signal.SIGINT)
        code, _, _ = finish(ui, timeout=60)
        assert code == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(server_group, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_store_killed_mid_creation_leaves_nothing_behind(tmp_path: Path) -> None:
    """SIGKILL during the schema migration: no half-built store; the next start builds it."""
    from jepa_lab.track.store import prepare_store

    db = tmp_path / "home" / "mlflow.db"
    uri = f"sqlite:///{db}"
    code = f"from jepa_lab.track.store import ensure_store; ensure_store({uri!r})"
    creating = subprocess.Popen([sys.executable, "-c", code], env=cli_env())
    deadline = time.monotonic() + 60
    while not list(db.parent.glob(".mlflow.db.*.tmp")):  # the migration has begun
        assert creating.poll() is None, "the store was created before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    creating.kill()
    creating.wait()
    assert not db.exists()
    assert prepare_store(uri, "after-crash") == "1"
    assert db.is_file() and not list(db.parent.glob(".mlflow.db.*.tmp*"))


def test_train_resume_continues_the_same_mlflow_run(
    server: str, served_run: dict[str, Any], tmp_path: Path
) -> None:
    """The checkpoint keeps the run id: --resume reopens that run instead of opening another."""
    run_dir = served_run["run_dir"]
    args = ["train", SMOKE, *FAST, "--tracking-uri", server, "--experiment", "e2e",
            "--run-dir", str(run_dir)]  # fmt: skip
    code, _, err = finish(jepa_lab(*args, env=cli_env(), cwd=tmp_path))
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = finish(jepa_lab(*args, "--resume", env=cli_env(), cwd=tmp_path))
    assert code == 0, err[-3000:]
    (run,) = search_runs(server, "e2e")
    assert run["info"]["run_id"] == served_run["run_id"] and run["info"]["run_id"] in out
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["jepa_lab.resumed"] == "true"
