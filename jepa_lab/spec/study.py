"""Study specs: a base experiment plus an ablation grid and/or an Optuna multi-objective search.

A study file names its base experiment (inline, or a path relative to the study file), optional
``overrides`` of it, and a ``grid`` (the full product of dotted keys x ``seeds`` is run) and/or a
``search`` (a declared space sampled by a named, seeded Optuna sampler, ``n_trials`` in total).
Like experiment specs, study specs are strict and frozen; this module and
:mod:`jepa_lab.spec.plan`, which loads study files, are core-side (pydantic and the spec modules
only) so every command can validate a study without MLflow or Optuna.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from jepa_lab.spec.base import FieldError, Spec, check_path, shorten

Metric = Literal[
    "diag/pred_loss",
    "diag/train_loss_heldout",
    "diag/sigreg_pooled",
    "diag/rankme",
    "diag/std",
    "diag/positional_share",
    "eval/probe_acc",
    "eval/knn_acc",
    "eval/probe_val_acc",
    "eval/random_probe_acc",
    "eval/random_probe_val_acc",
    "eval/pixel_probe_acc",
    "eval/pixel_probe_val_acc",
    "eval/gain_over_random",
    # world models (kind: world_model): validation numbers only, so a search never reads test
    "wm/val_nmse_final",
    "wm/val_success",
    "wm/val_effort",
    # eval.deploy: the INT8 copy (accuracy up, latency down, see DEPLOY_DIRECTIONS)
    "deploy/int8_probe_acc",
    "deploy/int8_knn_acc",
    "deploy/int8_mcnemar_p",
    "deploy/int8_cos",
    "deploy/int8_rel_l2",
    "deploy/fp32_p50_ms",
    "deploy/fp32_p99_ms",
    "deploy/int8_p50_ms",
    "deploy/int8_p99_ms",
    "deploy/speedup_p50",
    "deploy/slo_met",
]
# Metrics that exist only when the experiment evaluates its baselines (eval.baselines: true).
BASELINE_METRICS = {
    "eval/random_probe_acc",
    "eval/random_probe_val_acc",
    "eval/pixel_probe_acc",
    "eval/pixel_probe_val_acc",
    "eval/gain_over_random",
}
# Metrics scored on the test split, each with the validation metric a search selects on instead
# (docs/method.md, "Split protocol"). Every other metric reads training images only: the probe's
# validation split or the diagnostic slice.
TEST_METRICS = {
    "eval/probe_acc": "eval/probe_val_acc",
    "eval/knn_acc": "eval/probe_val_acc",
    "eval/random_probe_acc": "eval/random_probe_val_acc",
    "eval/pixel_probe_acc": "eval/pixel_probe_val_acc",
    "eval/gain_over_random": "eval/probe_val_acc",
    # the INT8 copy's probe is scored on test too; the fp32 validation accuracy stands for it
    "deploy/int8_probe_acc": "eval/probe_val_acc",
    "deploy/int8_knn_acc": "eval/probe_val_acc",
    "deploy/int8_mcnemar_p": "eval/probe_val_acc",
}
# Metrics of world-model runs; the others are metrics of image runs.
WORLD_PREFIXES = ("wm/",)
# Of the shared diag/* metrics, those only image runs have (eval/* are image-only too).
IMAGE_ONLY = {"diag/pred_loss", "diag/train_loss_heldout", "diag/positional_share"}
# Metrics that exist only with eval.deploy.enabled, and the direction that is better for each.
DEPLOY_DIRECTIONS = {
    "deploy/int8_probe_acc": "maximize",
    "deploy/int8_knn_acc": "maximize",
    "deploy/int8_mcnemar_p": "maximize",  # higher: no evidence INT8 changes the predictions
    "deploy/int8_cos": "maximize",
    "deploy/int8_rel_l2": "minimize",
    "deploy/fp32_p50_ms": "minimize",
    "deploy/fp32_p99_ms": "minimize",
    "deploy/int8_p50_ms": "minimize",
    "deploy/int8_p99_ms": "minimize",
    "deploy/speedup_p50": "maximize",
    "deploy/slo_met": "maximize",
}
KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
DottedKey = str


class ObjectiveSpec(Spec):
    """One objective: a metric of the trial's result, its direction, its hypervolume reference."""

    metric: Metric = Field(description="Result metric (eval/* or diag/*) the trial reports.")
    direction: Literal["minimize", "maximize"] = Field(description="Which way is better.")
    reference: float = Field(
        description="This objective's coordinate of the hypervolume reference point: a value "
        "worse than any trial of interest. Fixed in the file so hypervolumes stay comparable. "
        "Finite (like every float of a spec): a NaN or infinite reference makes every "
        "hypervolume meaningless."
    )


def _default_objectives() -> list[ObjectiveSpec]:
    # References: the MSE to LayerNorm'd targets is 1 for a prediction of 0, so 2 bounds any
    # trial of interest; the SIGReg statistic of a collapsed embedding is at most ~1.1 * 1024
    # (diagnostics.sigreg_statistic), so 1200 bounds it.
    return [
        ObjectiveSpec(metric="diag/pred_loss", direction="minimize", reference=2.0),
        ObjectiveSpec(metric="diag/sigreg_pooled", direction="minimize", reference=1200.0),
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
            raise FieldError(
                f"population_size is an nsga2 setting, not {self.kind}", "population_size"
            )
        if self.kind not in ("tpe", "gp") and "n_startup_trials" in self.model_fields_set:
            raise FieldError(
                f"n_startup_trials is a tpe/gp setting, not {self.kind}", "n_startup_trials"
            )
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
                raise FieldError("a categorical parameter needs choices: [...]", "type")
            extra = [n for n in ("low", "high", "log", "step") if n in self.model_fields_set]
            if extra:
                raise FieldError(f"{', '.join(extra)}: not for a categorical parameter", extra[0])
            texts = [json.dumps(c, sort_keys=True) for c in self.choices]
            if len(set(texts)) != len(texts):
                raise FieldError("choices must be distinct", "choices")
            return self
        if self.choices is not None:
            raise FieldError(f"choices: not for a {self.type} parameter (use low/high)", "choices")
        if self.low is None or self.high is None:
            raise FieldError(f"a {self.type} parameter needs low and high", "type")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise FieldError(f"need finite low < high, got [{self.low}, {self.high}]", "high")
        if self.log and (self.low <= 0 or self.step is not None):
            at = "low" if self.low <= 0 else "step"
            raise FieldError("log scale needs low > 0 and no step", at)
        if self.type == "int" and not all(
            float(v).is_integer() for v in (self.low, self.high, self.step or 1)
        ):
            name = next(
                n for n in ("low", "high", "step") if not float(getattr(self, n) or 1).is_integer()
            )
            raise FieldError("an int parameter needs integer low, high and step", name)
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


def _base_kind(value: Any) -> Any:
    # one message for either form, rather than one per member of the union
    if isinstance(value, str):
        return check_path(value)
    if not isinstance(value, dict):
        raise ValueError("base must be an experiment spec file's path or an inline spec mapping")
    return value


class StudySpec(Spec):
    """A study: a base experiment, what varies (grid and/or search) and what is optimised."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Study name: the Optuna study and the MLflow experiment are called this.",
    )
    description: str = Field("", max_length=2000, description="Free text, for humans.")
    base: Annotated[str | dict[str, Any], BeforeValidator(_base_kind)] = Field(
        description="The base experiment: an inline spec mapping, or an experiment spec file's "
        "path relative to this study file (not another study file)."
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
        description="What a search optimises, and what a study reports on its Pareto front "
        "(default: the fixed prediction error and the pooled SIGReg statistic on the held-out "
        "training images, both minimised). A search selects on its objectives, so they must not "
        "read the test split (eval/probe_acc: use eval/probe_val_acc); a grid-only study selects "
        "nothing, and its objectives, test metrics included, are reported only.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if self.grid is None and self.search is None:
            raise FieldError("a study needs a grid, a search, or both", "grid")
        for index, objective in enumerate(self.objectives):
            better = DEPLOY_DIRECTIONS.get(objective.metric)
            if better is not None and objective.direction != better:
                raise FieldError(
                    f"{objective.metric} is better when {better}d: use direction: {better}",
                    ("objectives", index, "direction"),
                )
        metrics = [o.metric for o in self.objectives]
        for index, metric in enumerate(metrics):
            if self.search is not None and metric in TEST_METRICS:
                raise FieldError(
                    f"{metric} is scored on the test split, and a search selects on its "
                    f"objectives: use {TEST_METRICS[metric]} (validation) instead; test metrics "
                    "are reported by grid-only studies",
                    ("objectives", index, "metric"),
                )
        if len(set(metrics)) != len(metrics):
            index = next(i for i, m in enumerate(metrics) if m in metrics[:i])
            raise FieldError("each metric may appear once", ("objectives", index, "metric"))
        if self.seeds is not None:
            if self.grid is None or self.search is not None:
                raise FieldError("only for grid-only studies (a search trial is one seed)", "seeds")
            if len(set(self.seeds)) != len(self.seeds) or not all(
                0 <= s <= 2**31 - 1 for s in self.seeds
            ):
                raise FieldError("seeds must be distinct, in [0, 2**31 - 1]", "seeds")
        for key, values in (self.grid or {}).items():
            if key == "seed":
                raise FieldError("use seeds: [...] rather than a grid key 'seed'", ("grid", key))
            if not values:
                raise FieldError("needs at least one value", ("grid", key))
            texts = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(texts)) != len(texts):
                raise FieldError("values must be distinct", ("grid", key))
        if self.grid is not None and self.search is not None:
            for key, values in self.grid.items():
                param = self.search.params.get(key)
                if param is None:
                    raise FieldError(
                        "with a search, grid cells seed it, so every grid key must be a search "
                        "parameter",
                        ("grid", key),
                    )
                bad = [v for v in values if not param.contains(v)]
                if bad:
                    raise FieldError(
                        f"{shorten(bad)} outside search.params.{shorten(key)}", ("grid", key)
                    )
            if self.n_cells > self.search.n_trials:
                raise FieldError(
                    f"the grid's {self.n_cells} cells exceed search.n_trials "
                    f"{self.search.n_trials} (the total, grid cells included)",
                    ("search", "n_trials"),
                )
        sections: list[tuple[str | int, ...]] = [
            *(("overrides", k) for k in self.overrides),
            *(("grid", k) for k in self.grid or {}),
            *(("search", "params", k) for k in (self.search.params if self.search else {})),
        ]
        for loc in sections:
            if loc[-1] == "seed" and self.seeds is not None:
                raise FieldError("seed: set by seeds: [...] in this study", loc)
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
