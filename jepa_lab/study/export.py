"""Study results as tables: seed aggregation, Welch tests, the Pareto front, hypervolume.

Pure functions of plain data (one dict per trial, as :func:`jepa_lab.study.results.trial_rows`
builds them) so they are tested without Optuna or MLflow. The front is taken over *configurations*:
trials are grouped by ``config_id`` (the spec digest without its seed), which both deduplicates
identical parameter vectors (NSGA-II may propose one twice) and aggregates the seeds of a grid cell
(mean, std, n). With one trial per configuration this is exactly Optuna's ``best_trials`` without
duplicates. The hypervolume is always printed beside the reference point it was taken against, which
the study file fixes. The plot of the front is drawn by :mod:`jepa_lab.study.plot`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec

Format = Literal["csv", "md", "latex", "parquet", "json"]
FORMATS: tuple[Format, ...] = ("csv", "md", "latex", "parquet", "json")
# Reported for every configuration (when the trials have them), after the objectives.
REPORTED = (
    "eval/probe_acc",
    "eval/knn_acc",
    "eval/random_probe_acc",
    "eval/pixel_probe_acc",
    "diag/rankme",
    "diag/std",
    "diag/positional_share",
    "diag/pred_loss",
    "diag/sigreg",
    "deploy/int8_probe_acc",
    "deploy/int8_cos",
    "deploy/fp32_p99_ms",
    "deploy/int8_p99_ms",
    "deploy/speedup_p50",
)
WELCH_METRIC = "eval/probe_acc"  # the headline claim the p-values test


# ------------------------------------------------------------------------------ statistics


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN with fewer than 2 per side."""
    from scipy.stats import ttest_ind

    x, y = np.asarray(a, float), np.asarray(b, float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return math.nan
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # no spread at all: the test is undefined
        return 0.0 if x[0] != y[0] else 1.0
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(x, y, equal_var=False).pvalue)


def _as_minimised(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return np.asarray(points, float).reshape(-1, len(directions)) * signs


def nondominated(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows of (P, M) ``points`` no other row dominates (duplicates kept)."""
    values = _as_minimised(points, directions)
    keep = np.ones(len(values), bool)
    for i, row in enumerate(values):
        dominated = np.all(values <= row, axis=1) & np.any(values < row, axis=1)
        keep[i] = not dominated.any()
    return keep


def hypervolume(points: np.ndarray, reference: Sequence[float], directions: Sequence[str]) -> float:
    """Volume dominated by ``points`` (P, M) and bounded by ``reference`` (exact).

    Objectives to maximise are negated first. Points not strictly better than the reference in
    every objective add nothing. Two objectives: a sweep over the points sorted by the first;
    more: slicing along the last objective (HSO), exact and fine for the small fronts of a study.
    """
    ref = _as_minimised(np.asarray(reference, float), directions)[0]
    values = _as_minimised(points, directions)
    values = values[np.all(values < ref, axis=1)]
    if len(values) == 0:
        return 0.0
    values = values[nondominated(values, ["minimize"] * len(ref))]
    return _hso(np.unique(values, axis=0), ref)


def _hso(points: np.ndarray, ref: np.ndarray) -> float:
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    if points.shape[1] == 2:
        order = points[np.argsort(points[:, 0], kind="stable")]
        volume, best_y = 0.0, ref[1]
        for x, y in order:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    order = points[np.argsort(points[:, -1], kind="stable")]
    volume = 0.0
    for i in range(len(order)):
        upper = order[i + 1, -1] if i + 1 < len(order) else ref[-1]
        depth = upper - order[i, -1]
        if depth > 0:
            volume += depth * _hso(order[: i + 1, :-1], ref[:-1])
    return volume


# ------------------------------------------------------------------------------- tables


def trials_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per trial: ``trial``, ``state``, ``config_id``, ``spec_digest``, ``seed``,
    ``strategy``, ``mlflow_run_id``, ``error``, the ``settings`` (dotted keys, as columns) and the
    ``metrics`` (slash-named, as columns)."""
    flat = []
    for row in rows:
        item = {k: v for k, v in row.items() if k not in ("settings", "metrics")}
        item.update({k: v for k, v in (row.get("settings") or {}).items() if k != "seed"})
        item.update(row.get("metrics") or {})
        flat.append(item)
    return pd.DataFrame(flat)


def aggregate(
    trials: pd.DataFrame, objectives: Sequence[ObjectiveSpec], params: Sequence[str]
) -> pd.DataFrame:
    """Per configuration: mean, std and n of every metric over its seeds, Welch p-values.

    Only COMPLETE trials count; a configuration that ran a seed twice keeps its first trial.
    ``p_vs_random``: the probe accuracy against the same configuration's random-init probe.
    ``p_vs_<kind>``: the probe accuracy against the configuration that differs only in its
    strategy (every ``strategy.*`` setting may differ), for each other strategy present.
    """
    metrics = [*dict.fromkeys([o.metric for o in objectives] + list(REPORTED))]
    done = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    if done.empty:
        return pd.DataFrame(columns=["config_id", "strategy", "n", *params, *metrics])
    done = done.sort_values("trial").drop_duplicates(["config_id", "seed"], keep="first")
    metrics = [m for m in metrics if m in done.columns]
    shared = [p for p in params if not p.startswith("strategy.")]
    groups, samples = [], {}
    for config, group in done.groupby("config_id", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {
            "trial": int(group["trial"].min()),
            "trials": ",".join(str(int(t)) for t in group["trial"]),
            "config_id": config,
            "mlflow_run_id": first.get("mlflow_run_id"),
            "mlflow_run_ids": ",".join(str(r) for r in group.get("mlflow_run_id", [])),
            "strategy": first["strategy"],
            "n": len(group),
            **{p: _plain(first.get(p)) for p in params},
            "state": "COMPLETE",
        }
        for metric in metrics:
            values = group[metric].astype(float)
            row[metric] = float(values.mean())
            row[f"{metric} std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        samples[config] = group
        groups.append(row)
    table = pd.DataFrame(groups)
    if WELCH_METRIC in done.columns:
        random = "eval/random_probe_acc"
        table["p_vs_random"] = [
            welch_p(samples[c][WELCH_METRIC], samples[c][random]) if random in done else math.nan
            for c in table["config_id"]
        ]
        kinds = sorted(table["strategy"].unique())
        for kind in kinds if len(kinds) > 1 else []:
            column = []
            for _, row in table.iterrows():
                match = table["strategy"].to_numpy() == kind
                for p in shared:
                    match &= _same(table[p], row[p])
                partner = table[match]
                if row["strategy"] == kind or len(partner) != 1:
                    column.append(math.nan)
                else:
                    other = samples[partner["config_id"].iloc[0]]
                    column.append(
                        welch_p(samples[row["config_id"]][WELCH_METRIC], other[WELCH_METRIC])
                    )
            table[f"p_vs_{kind}"] = column
    return table


def _plain(value: Any) -> Any:
    """Cell values pandas and Parquet can hold in one column: lists become their text."""
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value


def _same(column: pd.Series, value: Any) -> np.ndarray:
    return np.array([a == value or (_isnan(a) and _isnan(value)) for a in column], bool)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def front(table: pd.DataFrame, objectives: Sequence[ObjectiveSpec]) -> pd.DataFrame:
    """The non-dominated configurations of ``aggregate``'s table, best first objective first."""
    if table.empty:
        return table
    columns = [o.metric for o in objectives]
    usable = table.dropna(subset=columns)
    mask = nondominated(usable[columns].to_numpy(float), [o.direction for o in objectives])
    first = objectives[0]
    result = usable[mask].sort_values(
        [first.metric, "trial"], ascending=[first.direction == "minimize", True]
    )
    return result.reset_index(drop=True)


def front_hypervolume(table: pd.DataFrame, objectives: Sequence[ObjectiveSpec]) -> float:
    """Hypervolume of ``table``'s objective means against the study's reference point."""
    if table.empty:
        return 0.0
    points = table[[o.metric for o in objectives]].to_numpy(float)
    return hypervolume(points, [o.reference for o in objectives], [o.direction for o in objectives])


def short(direction: str) -> str:
    return "min" if direction == "minimize" else "max"


def export_table(
    table: pd.DataFrame, objectives: Sequence[ObjectiveSpec], params: Sequence[str]
) -> pd.DataFrame:
    """The exported columns: trial, config id, MLflow run id, objectives (direction in the
    header; std and n where seeds exist), parameters, probe accuracy and baselines, Welch
    p-values, state."""
    seeded = not table.empty and int(table["n"].max()) > 1
    out = pd.DataFrame(index=table.index)
    out["trial"] = table.get("trial")
    if seeded:
        out["trials"] = table.get("trials")
    out["config_id"] = table.get("config_id")
    out["mlflow_run_id"] = table.get("mlflow_run_ids" if seeded else "mlflow_run_id")
    out["strategy"] = table.get("strategy")
    for objective in objectives:
        header = f"{objective.metric} ({short(objective.direction)})"
        out[header] = table.get(objective.metric)
        if seeded:
            out[f"{header} std"] = table.get(f"{objective.metric} std")
    if seeded:
        out["n"] = table.get("n")
    for param in params:
        if param != "strategy.kind":  # that is the strategy column
            out[param] = table.get(param)
    taken = {o.metric for o in objectives}
    for metric in (
        "eval/probe_acc",
        "eval/knn_acc",
        "eval/random_probe_acc",
        "eval/pixel_probe_acc",
    ):
        if metric in table and metric not in taken:
            out[metric] = table[metric]
            if seeded:
                out[f"{metric} std"] = table[f"{metric} std"]
    for column in table.columns:
        if column.startswith("p_vs_"):
            out[column] = table[column]
    out["state"] = table.get("state")
    return out.reset_index(drop=True)


def render(
    table: pd.DataFrame, fmt: Format, meta: Mapping[str, Any], path: Path | None = None
) -> str | None:
    """``table`` in ``fmt``: written to ``path``, else returned as text (parquet needs a path).

    ``meta`` (study, objectives, reference point, hypervolume) goes where the format has room:
    beside the rows in JSON, the Parquet file's metadata, a caption in LaTeX, a note under the
    Markdown table; CSV stays a plain table.
    """
    if fmt == "parquet":
        if path is None:
            raise ValueError("parquet is binary: give an output file (-o FILE.parquet)")
        frame = table.copy()
        frame.attrs = {k: _jsonable(v) for k, v in meta.items()}
        frame.to_parquet(path, index=False)
        return None
    if fmt == "csv":
        text = table.to_csv(index=False)
    elif fmt == "md":
        text = table.to_markdown(index=False, floatfmt=".4g") + "\n\n" + _note(meta) + "\n"
    elif fmt == "latex":
        caption = _note(meta).replace("_", r"\_")
        text = table.to_latex(index=False, float_format="%.4g", caption=caption, escape=True)
    elif fmt == "json":
        import json

        records = [{k: _jsonable(v) for k, v in row.items()} for row in table.to_dict("records")]
        text = (
            json.dumps(
                {**{k: _jsonable(v) for k, v in meta.items()}, "rows": records},
                indent=2,
                allow_nan=False,
            )
            + "\n"
        )
    else:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if path is None:
        return text
    path.write_text(text)
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if value is pd.NA or value is None:
        return None
    return value


def _note(meta: Mapping[str, Any]) -> str:
    return (
        f"Study {meta.get('study')}: hypervolume {meta.get('hypervolume', math.nan):.6g} "
        f"against reference point {meta.get('reference_point')} "
        f"({', '.join(meta.get('objectives', []))})."
    )
