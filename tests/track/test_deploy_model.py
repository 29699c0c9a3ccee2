"""The encoder as an MLflow model: logged by a tracked run, loaded by pyfunc, served over HTTP;
deploy metrics in MLflow; bench-encoder; a missing backend on the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ..conftest import STUDIES

TINY = [
    "--set",
    "optim.steps=10",
    "--set",
    "eval.baselines=false",
    "--set",
    "eval.max_iter=20",
    "--set",
    "eval.deploy.enabled=true",
    "--set",
    "eval.deploy.iters=5",
    "--set",
    "eval.deploy.rounds=2",
    "--set",
    "eval.deploy.warmup=1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tracked smoke run with deploy on: its id, directory and store."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"JEPA_LAB_HOME": str(home), "JEPA_LAB_CACHE": str(home / "cache")}
    run_dir = home / "run"
    done = subprocess.run(
        [sys.executable, "-m", "jepa_lab", "train", str(STUDIES / "smoke.yaml"), *TINY,
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, env=env, cwd=home, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs(MlflowClient(uri).search_experiments()[0].experiment_id)
    return {"id": runs[0].info.run_id, "dir": run_dir, "uri": uri, "env": env, "home": home}


def embeddings_of_run(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """Test images and the run's fp32 embeddings of them, rebuilt from its checkpoint."""
    import torch

    from jepa_lab.core.strategies import build_training
    from jepa_lab.data.datasets import load_dataset
    from jepa_lab.eval.deploy import embedder
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.training.checkpoint import load_weights

    spec = ExperimentSpec.model_validate(
        json.loads((run["dir"] / "result.json").read_text())["spec"]
    )
    data = load_dataset(spec.data)
    model, strategy = build_training(spec, spec.optim.total_steps(len(data.train_labels)))
    load_weights(run["dir"] / "checkpoint.pt", spec, model, strategy)
    fp32 = embedder(strategy.eval_encoder(model.encoder), data)
    images = data.test_images[:4]
    with torch.inference_mode():
        return images.float().numpy(), fp32(images).numpy()


def test_deploy_metrics_in_result_and_mlflow_and_the_models_load(run: dict) -> None:
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    result = json.loads((run["dir"] / "result.json").read_text())
    logged = MlflowClient(run["uri"]).get_run(run["id"]).data.metrics
    for name in ("deploy/int8_probe_acc", "deploy/int8_p99_ms", "deploy/speedup_p50",
                 "deploy/int8_cos", "deploy/slo_met"):  # fmt: skip
        assert name in result["metrics"] and logged[name] == pytest.approx(result["metrics"][name])
    mlflow.set_tracking_uri(run["uri"])
    images, expected = embeddings_of_run(run)
    model = mlflow.pyfunc.load_model(f"runs:/{run['id']}/encoder")
    np.testing.assert_allclose(model.predict(images), expected, rtol=1e-5, atol=1e-5)
    int8 = mlflow.pyfunc.load_model(f"runs:/{run['id']}/encoder_int8").predict(images)
    cos = (int8 * expected).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.999


def test_bench_encoder_on_the_run_directory_logs_to_its_run(run: dict, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from jepa_lab.cli.main import app
    from jepa_lab.track.rundir import RUN_FILE

    recorded = json.loads((run["dir"] / RUN_FILE).read_text())  # written by the tracked train
    assert recorded["run_id"] == run["id"] and recorded["tracking_uri"] == run["uri"]
    client = MlflowClient(run["uri"])
    before = len(client.get_metric_history(run["id"], "deploy/int8_p99_ms"))
    out = tmp_path / "out.json"
    done = CliRunner().invoke(
        app,
        ["bench-encoder", str(run["dir"]), "--tokens", "16", "--iters", "5", "--rounds", "2",
         "--json", str(out), "--tracking-uri", run["uri"]],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    written = json.loads(out.read_text())
    assert "deploy/int8_p99_ms" in written["metrics"] and written["mlflow_run_id"] == run["id"]
    assert len(client.get_metric_history(run["id"], "deploy/int8_p99_ms")) == before + 1


def test_a_run_directory_records_its_run(tmp_path: Path) -> None:
    from jepa_lab.track.rundir import RUN_FILE, record_run, recorded_run, same_store

    assert recorded_run(tmp_path) is None  # not tracked
    (tmp_path / RUN_FILE).write_text("{not json")
    assert recorded_run(tmp_path) is None
    uri = "postgresql://user:secret@127.0.0.1:5432/mlflow"
    record_run(tmp_path / "run", uri, "3", "abc123")
    assert "secret" not in (tmp_path / "run" / RUN_FILE).read_text()
    recorded = recorded_run(tmp_path / "run")
    assert recorded is not None and recorded["run_id"] == "abc123"
    assert recorded["experiment_id"] == "3"
    assert same_store(recorded["tracking_uri"], uri)
    assert not same_store(recorded["tracking_uri"], "sqlite:///elsewhere.db")


def test_a_missing_backend_exits_2_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from jepa_lab.cli.main import app

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    done = CliRunner().invoke(app, ["train", str(STUDIES / "smoke.yaml"), "--no-track",
                                    "--set", "eval.deploy.enabled=true",
                                    "--set", "eval.deploy.backend=onnxruntime"])  # fmt: skip
    assert done.exit_code == 2
    assert "pip install 'jepa-lab[onnx]'" in done.output
    assert "step" not in done.output


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_runs_embeddings(
    run: dict, unused_tcp_port: int, tmp_path: Path
) -> None:
    """A real HTTP request to ``mlflow models serve`` returns the run's embeddings, and
    ``bench-encoder --http`` times that server (a few bounded requests)."""
    images, expected = embeddings_of_run(run)
    port = unused_tcp_port
    log = run["home"] / f"serve-{port}.log"
    bin_dir = Path(sys.executable).parent
    # `mlflow models serve --env-manager local` starts the server as `bash -c "exec uvicorn
    # ..."`: uvicorn is looked up on PATH, so the environment's bin folder must be on it even
    # when mlflow itself is called by its full path (an environment that is not activated).
    path = os.pathsep.join([str(bin_dir), run["env"].get("PATH", os.defpath)])
    server = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", f"runs:/{run['id']}/encoder",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=run["env"] | {"MLFLOW_TRACKING_URI": run["uri"], "PATH": path},
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        body = json.dumps({"inputs": images.tolist()}).encode()
        deadline = time.monotonic() + 240
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", data=body,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve never answered"
                time.sleep(1)
        np.testing.assert_allclose(np.asarray(answer["predictions"]), expected, atol=1e-5)

        out = tmp_path / "http.json"
        done = subprocess.run(
            [sys.executable, "-m", "jepa_lab", "bench-encoder", str(run["dir"]), "--tokens", "16",
             "--iters", "3", "--rounds", "1", "--warmup", "1", "--requests", "5", "--no-track",
             "--http", f"http://127.0.0.1:{port}/invocations", "--json", str(out)],
            capture_output=True, text=True, env=run["env"], cwd=run["home"], timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        metrics = json.loads(out.read_text())["metrics"]
        for name in ("http/client_p50_ms", "http/client_p99_ms", "http/model_fp32_p50_ms",
                     "http/model_int8_p50_ms"):  # fmt: skip
            assert 0 < metrics[name] < 60_000, name
    finally:
        if server.poll() is None:  # its own session: the server and its workers
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_http_url_with_or_without_invocations_and_no_server_is_one_line(
    unused_tcp_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer

    from jepa_lab.cli.bench import http_latency, invocations_url

    for url in (
        "http://127.0.0.1:5001",
        "http://127.0.0.1:5001/",
        "http://127.0.0.1:5001/invocations",
    ):
        assert invocations_url(url) == "http://127.0.0.1:5001/invocations"
    images = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(typer.Exit) as exit_info:  # nothing listens on the port
        http_latency(f"http://127.0.0.1:{unused_tcp_port}", images, requests=1, warmup=0)
    assert exit_info.value.exit_code == 2
    assert "no answer from a served model" in capsys.readouterr().err
