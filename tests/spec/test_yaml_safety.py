"""YAML is loaded safely everywhere: every ``!!python/...`` tag is refused, never executed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import SpecError, load
from jepa_lab.spec.plan import load_study

from ..conftest import STUDIES

# Each would run `touch MARKER` (or import a module) under yaml.load / yaml.unsafe_load.
TAGS = [
    '!!python/object/apply:os.system ["touch {marker}"]',
    '!!python/object/new:os.system ["touch {marker}"]',
    "!!python/object/apply:subprocess.call [[touch, {marker}]]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:builtins.object {{}}",
]


def payloads(tmp_path: Path) -> list[tuple[str, Path]]:
    return [(tag.format(marker=tmp_path / f"m{i}"), tmp_path / f"m{i}") for i, tag in
            enumerate(TAGS)]  # fmt: skip


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_spec_file_with_a_python_tag_is_refused(tmp_path: Path, where: str) -> None:
    for i, (tag, marker) in enumerate(payloads(tmp_path)):
        path = tmp_path / f"spec{i}.yaml"
        base = (STUDIES / "smoke.yaml").read_text()
        if where == "top":
            path.write_text(f"{base}\nextra: {tag}\n")
        else:
            path.write_text(base.replace("  kind: ema", f"  kind: {tag}"))
        with pytest.raises(SpecError, match="YAML"):
            load(ExperimentSpec, path)
        assert not marker.exists()


def test_a_study_file_with_a_python_tag_is_refused(tmp_path: Path) -> None:
    for i, (tag, marker) in enumerate(payloads(tmp_path)):
        path = tmp_path / f"study{i}.yaml"
        path.write_text(
            f"name: s{i}\nbase: {STUDIES / 'smoke.yaml'}\ngrid:\n  strategy.kind: [{tag}]\n"
        )
        with pytest.raises(SpecError, match="YAML"):
            load_study(path)
        assert not marker.exists()


def test_an_override_with_a_python_tag_is_never_executed(tmp_path: Path) -> None:
    for tag, marker in payloads(tmp_path):
        # a plain string at most: refused by validation, or kept as text
        with contextlib.suppress(SpecError):
            load(ExperimentSpec, STUDIES / "smoke.yaml", [f"name={tag}"])
        assert not marker.exists()
