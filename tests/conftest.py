"""Shared fixtures: tiny specs and paths. Tests never touch the user's cache or runs folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JEPA_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # the tests' workers register among themselves, not among the host's real workers
    monkeypatch.setenv("JEPA_LAB_RUNTIME_DIR", str(tmp_path_factory.getbasetemp() / "runtime"))
    # a loaded test machine must not add a line to the stderr that CLI tests compare exactly
    monkeypatch.setenv("JEPA_LAB_LOAD_WARNING", "0")


@pytest.fixture
def smoke_path() -> Path:
    return STUDIES / "smoke.yaml"


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
