"""Workers started separately on one host share its cores; a busy host is said so, once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jepa_lab.study import local
from jepa_lab.study.storage import worker_identity


def _register_other(folder: Path, pid: int, start: str) -> Path:
    host = worker_identity().split(":")[0]
    entry = folder / f"{pid}-{start}"
    entry.write_text(f"{host}:{pid}:{start}")
    return entry


def test_two_registered_workers_each_get_half_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "cores", lambda: 8)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with local.registered(tmp_path) as entry:
            assert entry.exists()
            assert local.thread_share(tmp_path) == 8
            _register_other(tmp_path, other.pid, "?")
            assert local.live_workers(tmp_path) == 2
            assert local.thread_share(tmp_path) == 4
            other.kill()
            other.wait()
            assert local.thread_share(tmp_path) == 8  # recounted: the dead one's entry goes
            assert len(list(tmp_path.iterdir())) == 1
        assert not entry.exists()
    finally:
        other.kill()
        other.wait()


def test_every_worker_gets_at_least_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "cores", lambda: 2)
    monkeypatch.setattr(local, "worker_alive", lambda identity: True)
    for pid in range(5):
        _register_other(tmp_path, 100000 + pid, "1")
    assert local.thread_share(tmp_path) == 1


def test_entries_of_other_hosts_are_neither_counted_nor_removed(tmp_path: Path) -> None:
    entry = tmp_path / "1-1"
    entry.write_text("elsewhere:1:1")
    assert local.live_workers(tmp_path) == 0 and entry.exists()


def test_the_runtime_folder_is_per_user_and_can_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local.RUNTIME_ENV, str(tmp_path))
    assert local.registry_folder() == tmp_path / "workers"


def test_a_load_above_the_cores_warns_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(local.LOAD_WARNING_ENV, raising=False)
    monkeypatch.setattr(local, "_warned", False)
    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(local.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    local.warn_if_loaded()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(local.os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    local.warn_if_loaded()
    local.warn_if_loaded()
    err = capsys.readouterr().err
    assert err.count("warning: load average 5.0 exceeds the 2 cores") == 1
    assert "not comparable" in err
    monkeypatch.setattr(local, "_warned", False)
    monkeypatch.setenv(local.LOAD_WARNING_ENV, "0")
    local.warn_if_loaded()
    assert capsys.readouterr().err == ""
