"""No selection on test: a search may not optimise a test-split metric; grid-only studies report."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jepa_lab.spec.experiment import EvalSpec
from jepa_lab.spec.load import SpecError
from jepa_lab.spec.plan import load_study
from jepa_lab.spec.study import TEST_METRICS

from ..conftest import STUDIES

SMOKE = STUDIES / "smoke.yaml"
SEARCH = (
    "search:\n  sampler: {kind: random, seed: 0}\n  n_trials: 2\n  params:\n"
    "    optim.lr: {type: float, low: 0.0001, high: 0.01}\n"
)


def _study(tmp_path: Path, metric: str, search: bool) -> Path:
    varies = SEARCH if search else "grid:\n  model.dim: [32, 64]\n"
    objectives = f"objectives:\n- metric: {metric}\n  direction: maximize\n  reference: 0.0\n"
    path = tmp_path / "study.yaml"
    path.write_text(f"name: s\nbase: {SMOKE}\n{varies}{objectives}")
    return path


def test_a_search_on_the_test_probe_exits_2_with_file_line_and_the_fix(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from jepa_lab.cli.main import app

    path = _study(tmp_path, "eval/probe_acc", search=True)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}:9: objectives.0.metric: eval/probe_acc is scored on ")
    assert "use eval/probe_val_acc (validation) instead" in line


@pytest.mark.parametrize("metric", sorted(TEST_METRICS))
def test_every_test_metric_is_refused_as_a_search_objective(tmp_path: Path, metric: str) -> None:
    with pytest.raises(SpecError) as info:
        load_study(_study(tmp_path, metric, search=True))
    [message] = info.value.messages
    assert f"objectives.0.metric: {metric} is scored on the test split" in message
    assert f"use {TEST_METRICS[metric]} " in message


@pytest.mark.parametrize("metric", ["eval/probe_acc", "eval/probe_val_acc", "diag/pred_loss"])
def test_grid_only_studies_may_report_test_metrics(tmp_path: Path, metric: str) -> None:
    load_study(_study(tmp_path, metric, search=False))


def test_validation_metrics_are_search_objectives(tmp_path: Path) -> None:
    load_study(_study(tmp_path, "eval/probe_val_acc", search=True))


def test_the_validation_split_must_leave_images_to_fit() -> None:
    with pytest.raises(ValidationError, match="val_size 5000 leaves no image"):
        EvalSpec(probe_train=5000)
    assert EvalSpec(probe_train=10000).val_size == 5000
