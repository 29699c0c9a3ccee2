"""Study files: a base experiment plus an ablation grid and/or an Optuna multi-objective search.

A study file names its base experiment (inline, or a path relative to the study file), optional
``overrides`` of it, and a ``grid`` (the full product of dotted keys x ``seeds`` is run) and/or a
``search`` (a declared space sampled by a named, seeded Optuna sampler, ``n_trials`` in total).
Every cell and every parameter bound is pushed through the one override path
(:func:`jepa_lab.specfile.apply_overrides` + :func:`~jepa_lab.specfile.validate`) when the file is
loaded, so a bad key or value is reported at the study file's line before any training starts.
Like experiment specs, study specs are strict and frozen; this module is core-side (pydantic and
the spec modules only) so every command can validate a study without MLflow or Optuna.
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
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from jepa_lab.spec import ExperimentSpec, Spec
from jepa_lab.specfile import Loc, Source, SpecError, apply_overrides, read_yaml, shorten, validate

Metric = Literal[
    "diag/pred_loss",
    "diag/sigreg",
    "diag/rankme",
    "diag/std",
    "diag/positional_share",
    "eval/probe_acc",
    "eval/knn_acc",
    "eval/probe_val_acc",
    "eval/random_probe_acc",
    "eval/pixel_probe_acc",
    "eval/gain_over_random",
]
# Metrics that exist only when the experiment evaluates its baselines (eval.baselines: true).
BASELINE_METRICS = {"eval/random_probe_acc", "eval/pixel_probe_acc", "eval/gain_over_random"}
KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
DottedKey = str


class ObjectiveSpec(Spec):
    """One objective: a metric of the trial's result, its direction, its hypervolume reference."""

    metric: Metric = Field(description="Result metric (eval/* or diag/*) the trial reports.")
    direction: Literal["minimize", "maximize"] = Field(description="Which way is better.")
    reference: float = Field(
        description="This objective's coordinate of the hypervolume reference point: a value "
        "worse than any trial of interest. Fixed in the file so hypervolumes stay comparable."
    )


def _default_objectives() -> list[ObjectiveSpec]:
    # References: smooth-L1 on LayerNorm'd targets stays well below 2; the SIGReg statistic of a
    # collapsed embedding is at most ~1.1 * 1024 (diagnostics.sigreg_statistic), so 1200 bounds it.
    return [
        ObjectiveSpec(metric="diag/pred_loss", direction="minimize", reference=2.0),
        ObjectiveSpec(metric="diag/sigreg", direction="minimize", reference=1200.0),
    ]


class SamplerSpec(Spec):
    """The Optuna sampler, named explicitly (Optuna 5's multi-objective default changed)."""

    kind: Literal["tpe", "nsga2", "gp", "random"] = Field(description="Sampling algorithm.")
    seed: int = Field(ge=0, le=2**31 - 1, description="Sampler seed (worker k uses a derived one).")
    population_size: int = Field(
        50, ge=2, le=10000, description="NSGA-II generation size (Optuna's default); nsga2 only."
    )
    n_startup_trials: int = Field(
        10, ge=0, le=10000, description="Random trials before TPE / GP model the space."
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> SamplerSpec:
        if self.kind != "nsga2" and "population_size" in self.model_fields_set:
            raise ValueError(f"population_size is an nsga2 setting, not {self.kind}")
        if self.kind not in ("tpe", "gp") and "n_startup_trials" in self.model_fields_set:
            raise ValueError(f"n_startup_trials is a tpe/gp setting, not {self.kind}")
        return self


class ParamSpec(Spec):
    """One dimension of the search space: a dotted spec key and its domain.

    One class with a ``type`` field rather than a tagged union, so errors read
    ``search.params.mask.ratio: ...`` at the parameter's line; the validator keeps each type's
    fields exclusive (a float has no ``choices``, a categorical no bounds).
    """

    type: Literal["float", "int", "categorical"] = Field(description="Kind of domain.")
    low: float | None = Field(None, description="Lower bound (float, int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(False, description="Sample on a log scale (float, int; low > 0).")
    step: float | None = Field(None, gt=0, description="Discretisation step (float, int).")
    choices: list[Any] | None = Field(None, min_length=1, description="Values (categorical).")
    when: dict[DottedKey, Any] | None = Field(
        None,
        description="Only suggest this parameter when these dotted keys of the trial's spec "
        "have these values (a list means any of them), e.g. {strategy.kind: sigreg}.",
    )

    @model_validator(mode="after")
    def _domain(self) -> ParamSpec:
        if self.type == "categorical":
            if self.choices is None:
                raise ValueError("a categorical parameter needs choices: [...]")
            extra = [n for n in ("low", "high", "log", "step") if n in self.model_fields_set]
            if extra:
                raise ValueError(f"{', '.join(extra)}: not for a categorical parameter")
            texts = [json.dumps(c, sort_keys=True) for c in self.choices]
            if len(set(texts)) != len(texts):
                raise ValueError("choices must be distinct")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: not for a {self.type} parameter (use low/high)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"need finite low < high, got [{self.low}, {self.high}]")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log scale needs low > 0 and no step")
        if self.type == "int" and not all(
            float(v).is_integer() for v in (self.low, self.high, self.step or 1)
        ):
            raise ValueError("an int parameter needs integer low, high and step")
        return self

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this domain (grid points seeding a search must)."""
        if self.type == "categorical":
            assert self.choices is not None
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high and (
            self.type == "float" or float(value).is_integer()
        )


class SearchSpec(Spec):
    """An Optuna multi-objective search over ``params``; ``n_trials`` counts across all workers."""

    sampler: SamplerSpec = Field(description="Sampler kind and seed.")
    n_trials: int = Field(ge=1, le=100_000, description="Trials in total, over all workers.")
    params: dict[DottedKey, ParamSpec] = Field(
        min_length=1, description="Search space, suggested in this order (see ``when``)."
    )


class StudySpec(Spec):
    """A study: a base experiment, what varies (grid and/or search) and what is optimised."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Study name: the Optuna study and the MLflow experiment are called this.",
    )
    description: str = Field("", max_length=2000, description="Free text, for humans.")
    base: str | dict[str, Any] = Field(
        description="The base experiment: an inline spec mapping, or a spec file path relative "
        "to this study file."
    )
    overrides: dict[DottedKey, Any] = Field(
        default_factory=dict, description="Dotted keys set on the base for every trial."
    )
    grid: dict[DottedKey, list[Any]] | None = Field(
        None, description="Dotted keys and their values; the full product is run (with seeds)."
    )
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="Seeds each grid cell is run with; results are aggregated per cell "
        "(mean, std, n). Grid studies only; null runs each cell once with the base seed.",
    )
    search: SearchSpec | None = Field(None, description="Optuna multi-objective search.")
    objectives: list[ObjectiveSpec] = Field(
        default_factory=_default_objectives,
        min_length=1,
        description="What the study optimises and reports on its Pareto front (default: "
        "held-out prediction loss and the SIGReg statistic, both minimised).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if self.grid is None and self.search is None:
            raise ValueError("a study needs a grid, a search, or both")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError("objectives: each metric may appear once")
        if self.seeds is not None:
            if self.grid is None or self.search is not None:
                raise ValueError("seeds: only for grid-only studies (a search trial is one seed)")
            if len(set(self.seeds)) != len(self.seeds) or not all(
                0 <= s <= 2**31 - 1 for s in self.seeds
            ):
                raise ValueError("seeds must be distinct, in [0, 2**31 - 1]")
        for key, values in (self.grid or {}).items():
            if key == "seed":
                raise ValueError("grid: use seeds: [...] rather than a grid key 'seed'")
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
            texts = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(texts)) != len(texts):
                raise ValueError(f"grid.{key}: values must be distinct")
        if self.grid is not None and self.search is not None:
            for key, values in self.grid.items():
                param = self.search.params.get(key)
                if param is None:
                    raise ValueError(
                        f"grid.{key}: with a search, grid cells seed it, so every grid key must "
                        "be a search parameter"
                    )
                bad = [v for v in values if not param.contains(v)]
                if bad:
                    raise ValueError(f"grid.{key}: {shorten(bad)} outside search.params.{key}")
            if self.n_cells > self.search.n_trials:
                raise ValueError(
                    f"the grid's {self.n_cells} cells exceed search.n_trials "
                    f"{self.search.n_trials} (the total, grid cells included)"
                )
        for key in [
            *self.overrides,
            *(self.grid or {}),
            *(self.search.params if self.search else {}),
        ]:
            if key == "seed" and self.seeds is not None:
                raise ValueError("seed: set by seeds: [...] in this study")
        return self

    @property
    def n_cells(self) -> int:
        """Grid cells, seeds not counted."""
        return math.prod(len(v) for v in (self.grid or {}).values()) if self.grid else 0

    @property
    def n_trials(self) -> int:
        """The study's total trial count (across all workers and resumptions)."""
        if self.search is not None:
            return self.search.n_trials
        return self.n_cells * len(self.seeds or [None])

    @property
    def grid_only(self) -> bool:
        return self.search is None


# ------------------------------------------------------------------------------ loading


def flow(value: Any) -> str:
    """``value`` as one line of YAML that parses back to it (``1e-05`` would read as a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
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

    def experiment(self, settings: Mapping[str, Any], line: int | None = None) -> ExperimentSpec:
        """The trial spec for ``settings`` (dotted key -> value) through the one override path."""
        source = self._source(settings, line)
        data = apply_overrides(self.base, [override(k, v) for k, v in settings.items()], source)
        return validate(ExperimentSpec, data, source)

    def resolved(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's spec data, validated when possible (for ``when`` conditions)."""
        try:
            return self.experiment(settings).to_dict()
        except SpecError:
            return apply_overrides(
                self.base, [override(k, v) for k, v in settings.items()], Source(self.source.path)
            )

    def _source(self, settings: Mapping[str, Any], line: int | None) -> _Layered:
        lines = self.source.lines
        set_at = {}
        for key in settings:
            section = "search" if ("search", "params", key) in lines else "grid"
            at = lines.get((section, "params", key) if section == "search" else ("grid", key))
            set_at[_as_loc(key)] = at or line or lines.get((), 1)
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
        base_path = (path.parent / spec.base).resolve()
        if not base_path.is_file():
            line = source.lines.get(("base",), 1)
            raise SpecError(
                [
                    f"{path}:{line}: base: no such spec file {spec.base!r} (relative "
                    f"to the study file): check the path"
                ]
            )
        base_data, base_source = read_yaml(base_path)
        base_source.path = str(path.parent / spec.base)
        return base_data, base_source
    lines = {loc[1:]: n for loc, n in source.lines.items() if loc[:1] == ("base",)}
    return data["base"], Source(source.path, lines)


def _check_objectives(plan: StudyPlan, spec: ExperimentSpec, where: str) -> list[str]:
    problems = []
    for index, objective in enumerate(plan.spec.objectives):
        if objective.metric in BASELINE_METRICS and not spec.eval.baselines:
            line = plan.source.lines.get(("objectives", index), 1)
            problems.append(
                f"{plan.source.path}:{line}: objectives.{index}.metric: {objective.metric} needs "
                f"eval.baselines: true{where}"
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
        for k, v in (param.when or {}).items():
            condition[k] = v[0] if isinstance(v, list) and v else v
            try:
                if k not in earlier:
                    lookup(resolved, k)
            except KeyError:
                problems.append(
                    f"{plan.source.path}:{line}: search.params.{key}.when: {k!r} is neither an "
                    "earlier parameter nor a key of the base spec"
                )
        earlier.append(key)
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values or []:
            shown = int(value) if param.type == "int" and value is not None else value
            try:
                plan.experiment({**condition, key: shown}, line)
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
        validate(ExperimentSpec, base_data, base_source)
    except SpecError as exc:
        if isinstance(spec.base, str):
            raise
        # an inline base: name its fields as they appear in the study file (base.model.dim)
        raise SpecError([re.sub(r"^(.*?:\d+): ", r"\1: base.", m) for m in exc.messages]) from None
    settings = {k: v for k, v in spec.overrides.items()}
    set_at = {_as_loc(k): source.lines.get(("overrides", k), 1) for k in settings}
    layered = _Layered(base_source, str(path), set_at, source.lines.get(("overrides",), 1))
    merged = apply_overrides(base_data, [override(k, v) for k, v in settings.items()], layered)
    validate(ExperimentSpec, merged, layered)
    text = path.read_text(encoding="utf-8", errors="replace")
    plan = StudyPlan(path, spec, merged, text, source, base_source)
    problems: list[str] = []
    stride = len(spec.seeds or [0])  # a seed cannot make a valid cell invalid: each cell once
    for cell in plan.cells()[::stride]:
        shown = ", ".join(override(k, v) for k, v in cell.items() if k != "seed")
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
