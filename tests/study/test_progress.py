"""The whole study's ETA: trials left x mean trial time / workers, the workers known or inferred
from the running trials (a dead worker's trial not counted); shown by `status` and `--json`."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from jepa_lab.cli.main import app
from jepa_lab.spec.plan import load_study
from jepa_lab.study import runner
from jepa_lab.study.progress import duration, eta_seconds, study_progress
from jepa_lab.study.storage import resolve_storage, worker_identity
from jepa_lab.study.tracking import RETRY_OF, WORKER
from jepa_lab.study.trial import WorkerOptions

from .test_readonly import scripted_train
from .test_study import write_study

START = datetime(2025, 1, 1, 12, 0, 0)


def frozen(number: int, state: TrialState, seconds: float = 0.0, **attrs: Any) -> FrozenTrial:
    done = state.is_finished()
    return FrozenTrial(
        number=number, state=state, value=None, values=[0.5] if state == TrialState.COMPLETE
        else None, datetime_start=START, datetime_complete=START + timedelta(seconds=seconds)
        if done else None, params={}, distributions={}, user_attrs=attrs, system_attrs={},
        intermediate_values={}, trial_id=number,
    )  # fmt: skip


def test_eta_is_remaining_times_mean_over_workers() -> None:
    assert eta_seconds(6, 60.0, 2) == 180.0
    assert eta_seconds(6, 60.0, 1) == 360.0
    assert eta_seconds(6, 60.0, 0) == 360.0  # nobody on it: timed as one worker
    assert eta_seconds(0, 60.0, 2) == 0.0
    assert duration(180) == "3m00s" and duration(3725) == "1h02m"


def test_workers_are_inferred_from_the_running_trials_of_live_workers() -> None:
    alive = worker_identity()  # this process
    dead = f"{socket.gethostname()}:{alive.split(':')[1]}:not-its-start"  # a reused pid
    trials = [frozen(k, TrialState.COMPLETE, s) for k, s in enumerate((30, 50, 70, 90))]
    trials += [frozen(4, TrialState.RUNNING, **{WORKER: alive})]
    trials += [frozen(5, TrialState.RUNNING, **{WORKER: "elsewhere:12:34"})]  # another host
    trials += [frozen(6, TrialState.RUNNING, **{WORKER: dead})]  # reaped at the next claim
    now = study_progress(trials, total=10)
    assert (now.finished, now.remaining, now.running, now.workers) == (4, 6, 2, 2)
    assert now.mean_trial_s == 60.0 and now.eta_s == 180.0  # 6 x 60 s / 2 workers
    assert now.eta() == "ETA 3m00s (6 trials x 60.0 s / 2 workers)"
    assert now.bracket() == "  [4/10 trials, ETA 3m00s (6 trials x 60.0 s / 2 workers)]"
    # a caller that knows its workers (run --workers 3); a worker between trials counts itself
    assert study_progress(trials, total=10, workers=3).eta_s == 120.0
    assert study_progress(trials, total=10, joining=1).workers == 3


def test_no_eta_before_a_complete_trial_and_none_after_the_last() -> None:
    failed = frozen(0, TrialState.FAIL, 5.0)
    retry = frozen(1, TrialState.RUNNING, **{RETRY_OF: 0, WORKER: worker_identity()})
    now = study_progress([failed, retry], total=2)
    assert now.finished == 0 and now.eta_s is None  # a retried failure does not count
    assert now.eta() == "ETA after the first complete trial"
    idle = study_progress([frozen(0, TrialState.COMPLETE, 40.0)], total=3)
    assert idle.workers == 0 and idle.eta_s == 80.0
    assert idle.eta() == "ETA 1m20s at 1 worker (2 trials x 40.0 s; no worker is running now)"
    done = study_progress([frozen(k, TrialState.COMPLETE, 1.0) for k in range(2)], total=2)
    assert done.eta_s == 0.0 and done.eta() == "no trial left"


class Stop(Exception):
    pass


def test_status_shows_the_eta_of_a_study_with_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One of three grid trials done, two claimed (running) by live workers: 2 trials x the
    mean / 2 workers, in the text and in --json."""
    import jepa_lab.training.loop
    from jepa_lab.track.store import ensure_store

    for name in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JEPA_LAB_HOME", str(tmp_path))
    monkeypatch.setattr(jepa_lab.training.loop, "train", scripted_train)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    path = write_study(tmp_path, "eta", grid={"strategy.kind": ["ema", "sigreg", "none"]})
    plan = load_study(path)
    session = runner.open_session(plan, resolve_storage(None, uri, plan.name), uri)

    def stop(outcome: Any) -> None:
        raise Stop

    with pytest.raises(Stop):
        runner.work(session, WorkerOptions(device="cpu"), echo=stop)
    assert runner.claim(session) is not None and runner.claim(session) is not None
    done = [t for t in session.trials() if t.state == TrialState.COMPLETE]
    assert done[0].datetime_complete is not None and done[0].datetime_start is not None
    mean = (done[0].datetime_complete - done[0].datetime_start).total_seconds()

    shown = CliRunner().invoke(app, ["status", str(path)])
    assert shown.exit_code == 0, shown.output
    first = shown.output.splitlines()[0]
    assert first.endswith(f"1 of 3 trials finished; ETA {duration(mean)} (2 trials x "
                          f"{mean:.1f} s / 2 workers)"), first  # fmt: skip
    as_json = CliRunner().invoke(app, ["status", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    progress = data["progress"]
    assert (progress["finished"], progress["remaining"], progress["running"]) == (1, 2, 2)
    assert progress["workers"] == 2 and progress["total"] == 3 == data["n_trials"]
    assert progress["eta_s"] == pytest.approx(2 * mean / 2)
    assert data["states"] == {"COMPLETE": 1, "RUNNING": 2} and data["eta"] in first
    assert data["study"] == "eta" and len(data["rows"]) == 1  # the front: the one configuration
