"""Loading study files: a :class:`StudyPlan` (the validated study spec with its resolved base
experiment) and each trial's experiment spec.

Every cell and every parameter bound is pushed through the one override path
(:func:`jepa_lab.spec.load.apply_overrides` + :func:`~jepa_lab.spec.load.validate`) when the file is
loaded, so a bad key or value is reported at the study file's line before any training starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jepa_lab.spec.base import shorten
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import (
    AnySpec,
    Loc,
    Source,
    SpecDumper,
    SpecError,
    apply_overrides,
    read_yaml,
    validate,
    validate_any,
)
from jepa_lab.spec.study import (
    BASELINE_METRICS,
    DEPLOY_DIRECTIONS,
    IMAGE_ONLY,
    WORLD_PREFIXES,
    SearchSpec,
    StudySpec,
)
from jepa_lab.spec.world import WORLD_KIND, WorldSpec


def flow(value: Any) -> str:
    """``value`` as one line of YAML that parses back to it (``1e-05`` would read as a string)."""
    text = yaml.dump(value, Dumper=SpecDumper, default_flow_style=True, width=math.inf)
    return text.removesuffix("\n").removesuffix("...").strip()


def override(key: str, value: Any) -> str:
    """The ``KEY=VALUE`` text :func:`apply_overrides` takes."""
    return f"{key}={flow(value)}"


def lookup(data: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of nested ``data`` (``KeyError`` if absent)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping):
            raise KeyError(key)
        node = node[part]
    return node


def _as_loc(key: str) -> Loc:
    return tuple(key.split("."))


class _Layered(Source):
    """Locations of a spec made of a base plus study settings: a key the study sets is reported
    at the study file's line of that setting, everything else where the base defines it."""

    def __init__(self, base: Source, study: str, set_at: dict[Loc, int], fallback: int) -> None:
        super().__init__(base.path, base.lines)
        self.base, self.study, self.set_at, self.fallback = base, study, set_at, fallback

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.set_at:
                return f"{self.study}:{self.set_at[loc[:end]]}"
        inside = [line for key, line in self.set_at.items() if key[: len(loc)] == loc]
        if inside:  # a section's own check failed on a value the study set
            return f"{self.study}:{min(inside)}"
        if not loc:
            return f"{self.study}:{self.fallback}"
        return self.base.where(loc)

    def rank(self, loc: Loc) -> int:
        if any(loc[:end] in self.set_at for end in range(1, len(loc) + 1)):
            return 2
        return self.base.rank(loc)


@dataclass(frozen=True)
class StudyPlan:
    """A validated study file with its resolved base experiment (after ``overrides``)."""

    path: Path
    spec: StudySpec
    base: dict[str, Any]  # the merged base experiment as plain data
    text: str  # the study file as written (logged as an artifact)
    source: Source
    base_source: Source

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def world(self) -> bool:
        """Whether the base experiment is a world model (``kind: world_model``)."""
        return self.base.get("kind") == WORLD_KIND

    def cells(self) -> list[dict[str, Any]]:
        """Grid cells (with ``seed`` when the study has seeds) as ``{key: value}`` params."""
        if self.spec.grid is None:
            return []
        grid = self.spec.grid
        seeds: Iterable[int | None] = self.spec.seeds or [None]
        cells = []
        for values in itertools.product(*grid.values()):
            for seed in seeds:
                cell = dict(zip(grid, values, strict=True))
                if seed is not None:
                    cell["seed"] = seed
                cells.append(cell)
        return cells

    def experiment(
        self, settings: Mapping[str, Any], line: int | None = None, at: Mapping[str, int] = {}
    ) -> AnySpec:
        """The trial spec for ``settings`` (dotted key -> value) through the one override path;
        errors point at the line in ``at`` of a key, else where the study sets it, else ``line``."""
        source = self._source(settings, line, at)
        data = apply_overrides(self.base, [override(k, v) for k, v in settings.items()], source)
        return validate_any(data, source)

    def resolved(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's spec data, validated when possible (for ``when`` conditions)."""
        try:
            return self.experiment(settings).to_dict()
        except SpecError:
            return apply_overrides(
                self.base, [override(k, v) for k, v in settings.items()], Source(self.source.path)
            )

    def _source(
        self, settings: Mapping[str, Any], line: int | None, at: Mapping[str, int] = {}
    ) -> _Layered:
        lines = self.source.lines
        grid = self.spec.grid or {}
        set_at = {}
        for key, value in settings.items():
            found = at.get(key)
            if found is None and key in grid and value in grid[key]:
                found = lines.get(("grid", key, grid[key].index(value)))  # the value's own line
            if found is None:
                found = lines.get(("search", "params", key)) or lines.get(("grid", key))
            set_at[_as_loc(key)] = found or line or lines.get((), 1)
        fallback = line or lines.get(("grid",)) or lines.get(("search",)) or 1
        return _Layered(self.base_source, self.source.path, set_at, fallback)

    def digest(self) -> str:
        """Identity of what the study runs; ``search.n_trials`` is left out so a search may be
        extended. A stored study made from another definition is refused on resume."""
        data = self.spec.model_dump(mode="json")
        data["base"] = self.base
        if data["search"] is not None:
            data["search"].pop("n_trials")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _base(spec: StudySpec, data: dict[str, Any], path: Path, source: Source) -> tuple[dict, Source]:
    if isinstance(spec.base, str):
        line = source.lines.get(("base",), 1)
        shown = shorten(spec.base)
        base_path = path.parent / spec.base
        if not base_path.is_file():
            raise SpecError(
                [
                    f"{path}:{line}: base: no such spec file {shown!r} (relative "
                    f"to the study file): check the path"
                ]
            )
        try:
            base_data, base_source = read_yaml(base_path)
        except SpecError as exc:  # name the study too: the base may be shared by several
            raise SpecError([f"{m} [base of {path}:{line}]" for m in exc.messages]) from None
        if "base" in base_data:
            raise SpecError(
                [
                    f"{path}:{line}: base: {shown!r} is a study file: base must be an experiment "
                    "spec (studies do not nest)"
                ]
            )
        return base_data, base_source
    lines = {loc[1:]: n for loc, n in source.lines.items() if loc[:1] == ("base",)}
    return data["base"], Source(source.path, lines)


def _check_objectives(plan: StudyPlan, spec: AnySpec, where: str) -> list[str]:
    problems = []
    world = isinstance(spec, WorldSpec)
    for index, objective in enumerate(plan.spec.objectives):
        lines = plan.source.lines
        line = lines.get(("objectives", index, "metric")) or lines.get(("objectives", index), 1)
        image_only = objective.metric in IMAGE_ONLY or objective.metric.startswith("eval/")
        if objective.metric.startswith(WORLD_PREFIXES) if not world else image_only:
            kind = "a world-model" if world else "an image"
            problems.append(
                f"{plan.source.path}:{line}: objectives.{index}.metric: {objective.metric} is "
                f"not a metric of {kind} experiment{where}"
            )
            continue
        if (
            isinstance(spec, ExperimentSpec)
            and objective.metric in BASELINE_METRICS
            and not spec.eval.baselines
        ):
            problems.append(
                f"{plan.source.path}:{line}: objectives.{index}.metric: {objective.metric} needs "
                f"eval.baselines: true{where}"
            )
        deploys = isinstance(spec, ExperimentSpec) and spec.eval.deploy.enabled
        if objective.metric in DEPLOY_DIRECTIONS and not deploys:
            lines = plan.source.lines
            line = lines.get(("objectives", index, "metric")) or lines.get(("objectives", index), 1)
            problems.append(
                f"{plan.source.path}:{line}: objectives.{index}.metric: {objective.metric} needs "
                f"eval.deploy.enabled: true{where}"
            )
    return problems


def _check_search(plan: StudyPlan, search: SearchSpec) -> list[str]:
    """Each parameter's bounds (or choices), under its ``when`` condition, must make a valid spec;
    a ``when`` key must be a parameter declared before it or a key of the base spec."""
    problems: list[str] = []
    resolved = plan.experiment({}).to_dict()
    earlier: list[str] = []
    for key, param in search.params.items():
        line = plan.source.lines.get(("search", "params", key), 1)
        condition = {}
        lines = plan.source.lines
        at_when: dict[str, int] = {}
        for k, v in (param.when or {}).items():
            when_line = lines.get(("search", "params", key, "when", k), line)
            at_when[k] = when_line
            condition[k] = v[0] if isinstance(v, list) and v else v
            try:
                if k not in earlier:
                    lookup(resolved, k)
            except KeyError:
                problems.append(
                    f"{plan.source.path}:{when_line}: search.params.{shorten(key)}.when."
                    f"{shorten(k)}: neither an earlier parameter nor a key of the base spec"
                )
        earlier.append(key)
        if param.type == "categorical":
            named: list[tuple[Loc, Any]] = [
                (("choices", i), c) for i, c in enumerate(param.choices or [])
            ]
        else:
            named = [(("low",), param.low), (("high",), param.high)]
        for where, value in named:
            shown = int(value) if param.type == "int" and value is not None else value
            value_line = lines.get(("search", "params", key, *where), line)
            try:
                plan.experiment({**condition, key: shown}, line, {**at_when, key: value_line})
            except SpecError as exc:
                problems.extend(exc.messages)
    return problems


def load_study(path: str | Path) -> StudyPlan:
    """Read and fully validate a study file; :class:`SpecError` lists every problem located."""
    path = Path(path)
    data, source = read_yaml(path)
    spec = validate(StudySpec, data, source)
    base_data, base_source = _base(spec, data, path, source)
    try:
        validate_any(base_data, base_source)
    except SpecError as exc:
        if isinstance(spec.base, str):
            raise
        # an inline base: name its fields as they appear in the study file (base.model.dim)
        raise SpecError([re.sub(r"^(.*?:\d+): ", r"\1: base.", m) for m in exc.messages]) from None
    settings = {k: v for k, v in spec.overrides.items()}
    set_at = {_as_loc(k): source.lines.get(("overrides", k), 1) for k in settings}
    layered = _Layered(base_source, str(path), set_at, source.lines.get(("overrides",), 1))
    merged = apply_overrides(base_data, [override(k, v) for k, v in settings.items()], layered)
    validate_any(merged, layered)
    text = path.read_text(encoding="utf-8", errors="replace")
    plan = StudyPlan(path, spec, merged, text, source, base_source)
    problems: list[str] = []
    stride = len(spec.seeds or [0])  # a seed cannot make a valid cell invalid: each cell once
    for cell in plan.cells()[::stride]:
        # each value cut as values are everywhere, so a huge grid value is no 100 KB line
        shown = ", ".join(shorten(override(k, v)) for k, v in cell.items() if k != "seed")
        try:
            experiment = plan.experiment(cell)
        except SpecError as exc:
            problems.extend(f"{m} [grid cell {shown}]" for m in exc.messages)
            continue
        problems.extend(_check_objectives(plan, experiment, f" [grid cell {shown}]"))
    if spec.search is not None:
        problems.extend(_check_search(plan, spec.search))
        problems.extend(_check_objectives(plan, plan.experiment({}), ""))
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return plan


def is_study_file(path: str | Path) -> bool:
    """Whether a YAML file is a study (it has a top-level ``base:``) rather than an experiment."""
    data, _ = read_yaml(path)
    return "base" in data
