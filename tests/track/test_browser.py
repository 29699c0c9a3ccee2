"""A real headless Chromium against `jepa-lab ui` on a loopback port: the nested study runs and
their key metrics render (skipped where Chromium is missing)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import STUDIES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt install chromium)"
)
def test_the_mlflow_ui_shows_the_nested_study_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from mlflow.tracking import MlflowClient

    from jepa_lab.track.store import resolve_uri

    study = tmp_path / "browse.yaml"
    shutil.copy(STUDIES / "smoke.yaml", tmp_path / "smoke.yaml")
    study.write_text(
        "name: browse\ndescription: A tiny study for the browser test.\nbase: smoke.yaml\n"
        "overrides:\n  optim.steps: 4\n  eval.baselines: false\ngrid:\n"
        "  strategy.kind: [ema, sigreg]\nseeds: [0]\nobjectives:\n"
        "  - {metric: diag/pred_loss, direction: minimize, reference: 2.0}\n"
    )
    env = {**os.environ, "JEPA_LAB_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "jepa_lab"]
    command = [*cli, "run", str(study), "--device", "cpu", "--no-progress"]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    monkeypatch.setenv("JEPA_LAB_HOME", str(tmp_path / "home"))
    experiment = MlflowClient(resolve_uri(None)).get_experiment_by_name("browse")
    assert experiment is not None
    port = free_port()
    server = subprocess.Popen([*cli, "ui", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):  # the MLflow server takes a few seconds to answer
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                view = browser.new_page(viewport={"width": 1500, "height": 900})
                view.goto(f"{url}#/experiments/{experiment.experiment_id}/runs")
                view.get_by_text("study-browse").first.wait_for(timeout=90_000)  # the parent
                parent = view.locator("[role=row]", has_text="study-browse")
                parent.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
                for child in ("ema-s0", "sigreg-s0"):  # nested under it once expanded
                    view.get_by_text(child, exact=True).first.wait_for(timeout=60_000)
                # a child's page shows its key metrics
                run = next(
                    r
                    for r in MlflowClient(resolve_uri(None)).search_runs([experiment.experiment_id])
                    if r.info.run_name == "ema-s0"
                )
                view.goto(f"{url}#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
                for metric in ("eval/probe_acc", "diag/rankme"):
                    view.get_by_text(metric).first.wait_for(timeout=60_000)
                value = f"{run.data.metrics['eval/probe_acc']:.4g}"[:4]
                assert value in view.content()
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # stop the server we started, by its PID
        server.wait(timeout=30)
