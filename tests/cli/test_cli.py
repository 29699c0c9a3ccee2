"""The command line as a user meets it: --version, --help, --json -, wrong kinds of file, and
fields of another variant. In process (CliRunner): no interpreter start per case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jepa_lab.cli.main import app

from ..conftest import STUDIES

SMOKE = str(STUDIES / "smoke.yaml")
A_STUDY = str(STUDIES / "cifar10_pareto.yaml")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("jepa-lab "), result.output


@pytest.mark.parametrize("command", ["train", "run", "worker", "status", "export", "ui"])
def test_help_shows_no_bool_metavar_and_paired_flags(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "<bool>" not in result.output, result.output
    if command in ("run", "worker"):
        assert "--no-fail-fast" in result.output


@pytest.mark.parametrize("command", ["train", "run", "worker"])
def test_every_command_checks_device_the_same_way(command: str) -> None:
    target = SMOKE if command == "train" else A_STUDY
    result = invoke(command, target, "--device", "gpu")
    assert result.exit_code == 2 and "expected cpu, cuda, cuda:N or mps" in result.output


def test_a_study_file_given_to_train_names_run() -> None:
    result = invoke("train", A_STUDY, "--no-track", "--no-progress")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"`jepa-lab run {A_STUDY}`" in lines[0], result.stderr


@pytest.mark.parametrize("command", ["run", "status", "export", "plot", "worker"])
def test_a_spec_given_to_a_study_command_names_train(command: str) -> None:
    result = invoke(command, SMOKE)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"`jepa-lab train {SMOKE}`" in lines[0], result.stderr


def test_a_field_of_another_variant_names_that_variant() -> None:
    result = invoke("train", SMOKE, "--set", "strategy.lambda=0.1", "--no-track", "--no-progress")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "strategy.lambda" in line and "strategy kind 'sigreg', not 'ema'" in line, line


def test_json_dash_writes_the_result_to_stdout_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "train", SMOKE, "--no-track", "--no-progress", "--json", "-", "--device", "cpu",
        "--set", "optim.steps=2", "--set", "eval.baselines=false", "--set", "eval.max_iter=10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the summary table went to stderr
    assert data["steps"] == 2 and "eval/probe_acc" in data["metrics"]
    assert "linear probe" in result.stderr
    again = invoke("train", SMOKE, "--no-track", "--no-progress", "--device", "cpu",
                   "--set", "optim.steps=2", "--set", "eval.baselines=false",
                   "--set", "eval.max_iter=10")  # fmt: skip
    assert again.exit_code == 2 and "--resume" in again.stderr  # no silent overwrite
