"""Bad input: each is one located line ``FILE:LINE: field: message``, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import MAX_BYTES, SpecError, load, read_yaml
from jepa_lab.spec.plan import load_study

from ..conftest import REPO, STUDIES

SMOKE = STUDIES / "smoke.yaml"


def errors(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(ExperimentSpec, path, overrides or [])
    return info.value.messages


def study_errors(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_study(path)
    return info.value.messages


def smoke_with(tmp_path: Path, old: str, new: str) -> Path:
    """smoke.yaml with one line replaced (line numbers kept)."""
    text = SMOKE.read_text()
    assert old in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace(old, new))
    return path


def study(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GRID = "grid:\n  model.dim: [32, 64]\n"


# ---------------------------------------------------------------------------- paths


def test_nul_byte_in_base_is_one_line(tmp_path: Path) -> None:
    path = study(tmp_path, 'name: s\nbase: "a\\0b.yaml"\n' + GRID)
    [message] = study_errors(path)
    assert message.startswith(f"{path}:2: base: ") and "NUL byte" in message


def test_nul_byte_in_base_exits_2_without_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from jepa_lab.cli.main import app

    path = study(tmp_path, 'name: s\nbase: "a\\0b.yaml"\n' + GRID)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {path}:2: base: a path cannot contain a NUL byte (got a\\0b.yaml)"]


def test_file_level_errors_have_a_location(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_BYTES + 1))
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    cases = {
        tmp_path / "missing.yaml": ":0: no such file",
        tmp_path: ":0: is a directory",
        big: ":0: file is larger than",
        binary: ":1: binary file",
        Path("a\0b.yaml"): ":0: a path cannot contain a NUL byte",
    }
    for path, expected in cases.items():
        with pytest.raises(SpecError) as info:
            read_yaml(path)
        [message] = info.value.messages
        assert message.startswith(str(path).replace("\0", "\\0") + expected), message


# ----------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "override",
    ["optim.lr=.nan", "optim.lr=.inf", "model.mlp_ratio=-.inf", "strategy.momentum_start=.nan"],
)
def test_non_finite_floats_are_refused(override: str) -> None:
    [message] = errors(SMOKE, [override])
    assert message.startswith(f"--set {override}: ") and "finite number" in message


def test_infinite_epochs_are_refused_at_validation() -> None:
    [message] = errors(SMOKE, ["optim.steps=null", "optim.epochs=.inf"])
    assert "optim.epochs: Input should be a finite number" in message


@pytest.mark.parametrize("reference", [".nan", ".inf", "-.inf"])
def test_non_finite_objective_reference_is_refused(tmp_path: Path, reference: str) -> None:
    objectives = (
        f"objectives:\n- metric: diag/pred_loss\n  direction: minimize\n  reference: {reference}\n"
    )
    path = study(tmp_path, f"name: s\nbase: {SMOKE}\n{GRID}{objectives}")
    [message] = study_errors(path)
    assert message.startswith(f"{path}:8: objectives.0.reference: Input should be a finite")


def test_non_finite_search_bound_is_refused(tmp_path: Path) -> None:
    search = (
        "search:\n  sampler: {kind: random, seed: 0}\n  n_trials: 2\n  params:\n"
        "    optim.lr:\n      type: float\n      low: .nan\n      high: 0.01\n"
    )
    path = study(tmp_path, f"name: s\nbase: {SMOKE}\n{search}")
    messages = study_errors(path)
    assert f"{path}:9: search.params.optim.lr.low: Input should be a finite number" in messages[0]


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("  steps: 20", "  steps: yes", "optim.steps"),
        ("  batch_size: 64", '  batch_size: "64"', "optim.batch_size"),
        ("  depth: 2", "  depth: true", "model.depth"),
        ("  n_test: 256", "  channels: true", "data.channels"),
        ("  min_context: 2", "  min_context: 2.0", "mask.min_context"),
    ],
)
def test_no_bool_or_string_to_number_coercion(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    path = smoke_with(tmp_path, old, new)
    line = path.read_text().splitlines().index(new) + 1
    [message] = errors(path)
    assert message.startswith(f"{path}:{line}: {field}: "), message


def test_bool_learning_rate_is_refused() -> None:
    [message] = errors(SMOKE, ["optim.lr=on"])
    assert message.startswith("--set optim.lr=on: optim.lr: Input should be a valid number")


def test_coercions_kept_on_purpose() -> None:
    """int -> float, list -> tuple, and YAML 1.2 exponents (1e-3) read as numbers."""
    spec = load(ExperimentSpec, SMOKE, ["optim.lr=1", "optim.lr_end=1e-6", "optim.betas=[0, 0.9]"])
    assert spec.optim.lr == 1.0 and isinstance(spec.optim.lr, float)
    assert spec.optim.lr_end == 1e-6 and spec.optim.betas == (0.0, 0.9)
    assert ExperimentSpec.model_validate(spec.to_dict()) == spec


# ---------------------------------------------------------------------- YAML keys


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    path = smoke_with(tmp_path, "  steps: 20", "  batch_size: 32")
    [message] = errors(path)
    assert message.startswith(f"{path}:26: batch_size: duplicate key")
    assert "line 25" in message and "line 26" in message
    path = smoke_with(tmp_path, "  target_scale: [0.15, 0.25]", "  target_scale: {a: 1, a: 2}")
    [message] = errors(path)
    assert message.startswith(f"{path}:20: a: duplicate key")


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = SMOKE.read_text().replace("optim:\n", "defaults: &d {batch_size: 8}\noptim:\n  <<: *d\n")
    base = tmp_path / "base.yaml"
    base.write_text(text.replace("defaults:", "x-defaults:"))
    data, _ = read_yaml(base)
    assert data["optim"]["batch_size"] == 64


def test_long_keys_are_shortened() -> None:
    [message] = errors(SMOKE, ["model." + "k" * 100_000 + "=1"])
    assert len(message) < 1000
    path_errors = errors(SMOKE, [f"{'k' * 100_000}.x=1"])
    assert all(len(m) < 1000 for m in path_errors)


def test_a_huge_grid_value_is_shortened_in_the_cell_label(tmp_path: Path) -> None:
    # found by bench/fuzz.py: a 10,000-element list as a grid value gave a 59 KB error line
    huge = list(range(10_000))
    path = study(tmp_path, f"name: s\nbase: {SMOKE}\ngrid:\n  optim.lr: [0.001, {huge}]\n")
    messages = study_errors(path)
    assert messages and all(len(m) < 1000 for m in messages)
    assert any("[grid cell optim.lr=" in m for m in messages)


# --------------------------------------------------------------------- study bases


def test_a_study_as_base_is_one_line(tmp_path: Path) -> None:
    inner = study(tmp_path, f"name: inner\nbase: {SMOKE}\n{GRID}", "inner.yaml")
    path = study(tmp_path, f"name: outer\nbase: {inner.name}\n{GRID}")
    [message] = study_errors(path)
    assert message == (
        f"{path}:2: base: 'inner.yaml' is a study file: base must be an experiment spec "
        "(studies do not nest)"
    )


def test_a_broken_base_names_the_study(tmp_path: Path) -> None:
    study(tmp_path, "name: x\ndata: [\n", "base.yaml")
    path = study(tmp_path, f"name: s\nbase: base.yaml\n{GRID}")
    [message] = study_errors(path)
    assert "base.yaml:3: YAML syntax error" in message and message.endswith(f"[base of {path}:2]")


# ---------------------------------------------------------------------- line numbers


def test_cross_field_errors_point_at_the_field(tmp_path: Path) -> None:
    path = smoke_with(tmp_path, "  patch_size: 4", "  patch_size: 5")
    [message] = errors(path)
    assert message.startswith(f"{path}:10: model.patch_size: model.patch_size 5 does not divide")
    [message] = errors(SMOKE, ["model.heads=3"])
    assert message.startswith("--set model.heads=3: model.heads: heads (3) must divide dim")
    [message] = errors(SMOKE, ["optim.epochs=2"])  # at what the override set
    assert message.startswith("--set optim.epochs=2: optim.epochs: set exactly one")
    [message] = errors(smoke_with(tmp_path, "  batch_size: 64", "  epochs: 2"))
    assert message.startswith(f"{tmp_path / 'spec.yaml'}:26: optim.steps: set exactly one")


def test_when_errors_point_at_the_condition(tmp_path: Path) -> None:
    search = (
        "search:\n  sampler: {kind: random, seed: 0}\n  n_trials: 2\n  params:\n"
        "    optim.lr:\n      type: float\n      low: 0.001\n      high: 0.01\n"
        "      when:\n        strategy.kind: ema\n        nope.key: 1\n"
    )
    path = study(tmp_path, f"name: s\nbase: {SMOKE}\n{search}")
    messages = study_errors(path)
    assert messages[0].startswith(f"{path}:13: search.params.optim.lr.when.nope.key: neither")
    assert all(m.startswith(f"{path}:13: ") for m in messages)


def test_study_cross_field_errors_point_at_the_field(tmp_path: Path) -> None:
    path = study(tmp_path, f"name: s\nbase: {SMOKE}\ngrid:\n  model.dim: [32, 32]\n")
    [message] = study_errors(path)
    assert message.startswith(f"{path}:4: grid.model.dim: values must be distinct")


# --------------------------------------------------------------------------- speed


def test_validate_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from jepa_lab.cli.main import app\n"
        f"app(['validate', {str(SMOKE)!r}, {str(STUDIES / 'recipe_search.yaml')!r}], "
        "standalone_mode=False)\n"
        "bad = [m for m in ('torch', 'numpy', 'mlflow', 'optuna') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
