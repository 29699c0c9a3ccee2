"""What the tracking layer lets out: hints that name real options, no password in any message,
a logged spec read back safely, and a UI on loopback unless exposed on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jepa_lab.cli.main import app
from jepa_lab.study.storage import resolve_storage
from jepa_lab.track.redact import redact, redact_text
from jepa_lab.track.store import TrackingError

from ..conftest import STUDIES

SMOKE = str(STUDIES / "smoke.yaml")
STUDY = str(STUDIES / "ema_vs_sigreg.yaml")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def one_line(result: Any) -> str:
    # the start-up line (what is about to run, and where) comes before any import
    lines = [x for x in result.output.strip().splitlines() if not x.endswith("; loading...")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return str(lines[0])


@pytest.mark.parametrize(
    ("command", "offers_no_track"),
    [(["train", SMOKE], True), (["run", STUDY], False), (["worker", STUDY], False),
     (["status", STUDY], False), (["export", STUDY], False), (["runs", "list"], False)],
)  # fmt: skip
def test_the_unreachable_server_hint_names_only_real_options(
    command: list[str], offers_no_track: bool, unused_tcp_port: int
) -> None:
    line = one_line(invoke(*command, "--tracking-uri", f"http://127.0.0.1:{unused_tcp_port}"))
    assert "does not answer" in line
    assert ("--no-track" in line) is offers_no_track


def test_redaction_of_urls_and_text() -> None:
    assert redact("postgresql://user:secret@db:5432/x") == "postgresql://***@db:5432/x"
    assert redact("http://user:secret@host:5000") == "http://***@host:5000"
    assert redact("http://host:5000") == "http://host:5000"
    text = 'could not connect: "postgresql+psycopg2://u:s%40cret@127.0.0.1:1/db" and http://t@h'
    assert "cret" not in redact_text(text) and "t@h" not in redact_text(text)
    for url in ("postgresql://user:p@ss:w%2Frd@db/x", "postgresql://user:secret@db:bad/x"):
        assert "secret" not in resolve_storage(url, "", "s").shown
        assert "ss:w" not in resolve_storage(url, "", "s").shown


@pytest.mark.parametrize("command", ["status", "export", "run", "worker", "plot"])
def test_a_storage_password_never_reaches_an_error_line(command: str, tmp_path: Path) -> None:
    """An unreachable PostgreSQL storage (the driver's error may echo the URL)."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = "postgresql://user:secret@127.0.0.1:1/db"
    result = invoke(command, STUDY, "--storage", storage, "--tracking-uri", tracking)
    assert result.exit_code == 2, result.output
    assert "secret" not in result.output and "error: storage" in result.output


@pytest.mark.parametrize(
    "command", [["train", SMOKE], ["runs", "list"], ["status", STUDY], ["run", STUDY]]
)
def test_a_tracking_password_never_reaches_an_error_line(
    command: list[str], unused_tcp_port: int
) -> None:
    uri = f"http://user:secret@127.0.0.1:{unused_tcp_port}"
    line = one_line(invoke(*command, "--tracking-uri", uri))
    assert "secret" not in line and "***@127.0.0.1" in line


def test_a_logged_spec_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from jepa_lab.track.reader import spec_of_run
    from jepa_lab.track.store import prepare_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(prepare_store(uri, "tagged"))
    marker = tmp_path / "pwned"
    text = f'name: !!python/object/apply:os.system ["touch {marker}"]\n'
    client.log_text(run.info.run_id, text, "spec.yaml")
    with pytest.raises(TrackingError, match="not plain YAML"):
        spec_of_run(uri, run.info.run_id)
    line = one_line(invoke("train", "--from-run", run.info.run_id, "--tracking-uri", uri))
    assert "not plain YAML" in line and not marker.exists()


def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[Any, list]:
    """Invoke `ui`, recording where its server would bind instead of starting MLflow."""
    from jepa_lab.track import server

    calls: list[tuple[str, int]] = []

    def start_server(uri: str, host: str, port: int, workers: int, log: Path) -> Any:
        calls.append((host, port))
        raise TrackingError("not started in this test")

    monkeypatch.setattr(server, "start_server", start_server)
    monkeypatch.setenv("JEPA_LAB_HOME", str(tmp_path))
    return invoke("ui", *args), calls


def test_the_ui_listens_on_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unused_tcp_port: int
) -> None:
    result, calls = served(monkeypatch, tmp_path, "--port", str(unused_tcp_port))
    assert calls == [("127.0.0.1", unused_tcp_port)] and "warning" not in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_another_address_needs_expose_and_warns(
    host: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unused_tcp_port: int
) -> None:
    port = str(unused_tcp_port)
    refused, calls = served(monkeypatch, tmp_path, "--host", host, "--port", port)
    assert "--expose" in one_line(refused) and calls == []
    exposed, calls = served(monkeypatch, tmp_path, "--host", host, "--port", port, "--expose")
    assert calls == [(host, unused_tcp_port)]
    assert "warning" in exposed.output and "no authentication" in exposed.output
