"""Spec validation: strict fields, located one-line errors, overrides, every shipped study."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jepa_lab.spec.experiment import ExperimentSpec, MultiBlockMaskSpec
from jepa_lab.spec.load import SpecError, load

from ..conftest import STUDIES

BAD = Path(__file__).parent / "specs"


def errors(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(ExperimentSpec, path, overrides or [])
    return info.value.messages


def experiment_files() -> list[Path]:
    """Experiment specs (study files, which name a ``base`` experiment, are tested elsewhere)."""
    import yaml

    return sorted(p for p in STUDIES.glob("*.yaml") if "base" not in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path: Path) -> None:
    from jepa_lab.spec.load import load_any

    spec = load_any(path)
    if isinstance(spec, ExperimentSpec):  # else a world model (kind: world_model)
        assert spec.data.image_size % spec.model.patch_size == 0


def test_unknown_and_out_of_range_fields_are_located() -> None:
    messages = errors(BAD / "bad_fields.yaml")
    assert "bad_fields.yaml:7: model.dimm: unknown field: did you mean 'dim'?" in messages[0]
    joined = "\n".join(messages)
    assert (
        "bad_fields.yaml:10: strategy.momentum_start: "
        "Input should be less than or equal to 1 (got 1.5)" in joined
    )
    assert (  # EMA has no lambda: the hint names the variant that has it
        "bad_fields.yaml:11: strategy.lambda: 'lambda' is a field of strategy kind 'sigreg', "
        "not 'ema'" in joined
    )
    assert "bad_fields.yaml:13: optim.batch_size:" in joined and "(got lots)" in joined
    assert "bad_fields.yaml:17: mask.ratio: Input should be less than 1 (got 2)" in joined
    assert len(messages) == 5  # all at once


def test_geometry_errors(smoke_path: Path) -> None:
    [message] = errors(smoke_path, ["model.patch_size=5"])
    assert "patch_size 5 does not divide the image size 16" in message
    [message] = errors(smoke_path, ["mask.target_scale=[0.9, 1.0]"])
    assert "a target block can cover 16 of the 16 tokens" in message


def test_unknown_strategy_kind(smoke_path: Path) -> None:
    [message] = errors(smoke_path, ["strategy.kind=magic"])
    assert message.startswith("--set strategy.kind=magic: strategy.kind: unknown kind 'magic'")
    assert "'ema', 'sigreg', 'none'" in message


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\ndata:\n  name: [synthetic\n")
    [message] = errors(bad)
    assert message.startswith(f"{bad}:") and "YAML syntax error" in message


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    [message] = errors(bomb)
    assert "alias bomb" in message and len(message) < 300


def test_huge_value_is_truncated(smoke_path: Path) -> None:
    [message] = errors(smoke_path, ["optim.lr=" + "9" * 5000])
    assert len(message) < 300


def test_switching_strategy_kind_drops_the_old_fields(smoke_path: Path) -> None:
    spec = load(ExperimentSpec, smoke_path, ["strategy.lambda=0.1", "strategy.kind=sigreg"])
    assert spec.strategy.kind == "sigreg" and spec.strategy.lambda_ == 0.1
    spec = load(ExperimentSpec, smoke_path, ["mask.ratio=0.5", "mask.scheme=random"])
    assert spec.mask.scheme == "random" and spec.mask.ratio == 0.5
    assert isinstance(load(ExperimentSpec, smoke_path).mask, MultiBlockMaskSpec)


def test_override_errors(smoke_path: Path) -> None:
    [message] = errors(smoke_path, ["oops"])
    assert "expected KEY.PATH=VALUE" in message
    [message] = errors(smoke_path, ["mask.ratio=0.5"])
    assert message.startswith("--set mask.ratio=0.5: mask.ratio: 'ratio' is a field of mask scheme")


def test_sigreg_stop_gradient_needs_context_embeddings(smoke_path: Path) -> None:
    [message] = errors(smoke_path, ["strategy.kind=sigreg", "strategy.stop_gradient=true"])
    assert "context_pooled" in message


def test_specs_are_frozen_and_hash_stably(smoke_path: Path) -> None:
    spec = load(ExperimentSpec, smoke_path)
    with pytest.raises(ValidationError, match="frozen"):
        spec.seed = 3  # type: ignore[misc]
    other = load(ExperimentSpec, smoke_path, ["seed=7"])
    assert spec.digest() != other.digest()
    assert spec.digest(with_seed=False) == other.digest(with_seed=False)
    assert ExperimentSpec.model_validate(spec.to_dict()) == spec


def test_schema_names_the_sections() -> None:
    schema = ExperimentSpec.model_json_schema(by_alias=True)
    assert {"data", "model", "mask", "strategy", "optim", "eval"} <= set(schema["properties"])
    assert "lambda" in schema["$defs"]["SigregSpec"]["properties"]


def test_committed_schema_is_current() -> None:
    """Study files point editors at docs/jepa-lab.schema.json: it must match the spec classes."""
    import json

    committed = json.loads((STUDIES.parent / "docs" / "jepa-lab.schema.json").read_text())
    assert committed == ExperimentSpec.model_json_schema(by_alias=True), (
        "regenerate it: jepa-lab schema > docs/jepa-lab.schema.json"
    )
