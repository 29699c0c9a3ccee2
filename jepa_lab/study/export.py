"""Study results as tables: seed aggregation, paired comparisons, the Pareto front, hypervolume.

Pure functions of plain data (one dict per trial, as :func:`jepa_lab.study.results.trial_rows`
builds them) so they are tested without Optuna or MLflow. The front is taken over *configurations*:
trials are grouped by ``config_id`` (the spec digest without its seed), which both deduplicates
identical parameter vectors (NSGA-II may propose one twice) and aggregates the seeds of a grid cell
(mean, std, n, 95 % interval); each configuration's runs are paired by seed with its baselines
and its other-strategy partner (:mod:`jepa_lab.study.stats`). With one trial per configuration
the front is exactly Optuna's ``best_trials`` without duplicates. The hypervolume is always
printed beside the reference point it was taken against, which the study file fixes. The plot
of the front: :mod:`jepa_lab.study.plot`, its uncertainty by :mod:`~jepa_lab.study.pareto`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study import stats
from jepa_lab.study.quantities import PLANNING_METRICS, quantity

Format = Literal["csv", "md", "latex", "parquet", "json"]
FORMATS: tuple[Format, ...] = ("csv", "md", "latex", "parquet", "json")
# Reported for every configuration (when the trials have them), after the objectives.
# The probe accuracies (test and validation) of the encoder and of its baselines.
PROBES = (
    "eval/probe_acc",
    "eval/probe_val_acc",
    "eval/knn_acc",
    "eval/random_probe_acc",
    "eval/random_probe_val_acc",
    "eval/pixel_probe_acc",
    "eval/pixel_probe_val_acc",
)
REPORTED = (
    *PROBES,
    "diag/rankme",
    "diag/std",
    "diag/positional_share",
    "diag/pred_loss",
    "diag/sigreg_pooled",
    "deploy/int8_probe_acc",
    "deploy/int8_cos",
    "deploy/fp32_p99_ms",
    "deploy/int8_p99_ms",
    "deploy/speedup_p50",
)
# World-model runs: validation numbers, collapse, the drift table's NMSE (k = 1, 10, 20, 30 under
# each correction) and, matched by pattern since arms and modes follow the spec, planning on the
# test episodes (:func:`reported`).
WORLD_REPORTED = (
    "wm/val_success",
    "wm/val_nmse_final",
    "diag/collapsed",
    "diag/total_variance",
    *(f"drift/nmse_k{k}/{c}" for c in ("none", "renorm", "knn") for k in (1, 10, 20, 30)),
)
PLANNING = re.compile(rf"plan/test/(same|cross)/[a-z_]+/[a-z_]+/({'|'.join(PLANNING_METRICS)})")
CLAIM = "eval/probe_acc"  # the headline claim the paired comparisons test
# Comparisons with a configuration's own baselines: name -> (its metric, its predictions).
BASELINES = {
    "random": ("eval/random_probe_acc", "pred/random_probe"),
    "pixels": ("eval/pixel_probe_acc", "pred/pixel_probe"),
}
# Validation accuracies -> the metric holding their number of validation images (Wilson CI).
VALIDATION = {
    "eval/probe_val_acc": "eval/probe_val_n",
    "eval/random_probe_val_acc": "eval/random_probe_val_n",
    "eval/pixel_probe_val_acc": "eval/pixel_probe_val_n",
}


# ------------------------------------------------------------------------------ front


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


def reported(objectives: Sequence[ObjectiveSpec], columns: Sequence[str]) -> list[str]:
    """The metrics a table reports, in order: the objectives, :data:`REPORTED`, then the
    world-model ones (:data:`WORLD_REPORTED` and the planning metrics among ``columns``, in
    their logged order: task, mode, arm)."""
    metrics = [o.metric for o in objectives] + [*REPORTED, *world_metrics(columns)]
    return [*dict.fromkeys(metrics)]


def world_metrics(columns: Sequence[str]) -> list[str]:
    """:data:`WORLD_REPORTED`, then the planning metrics among ``columns`` in their order."""
    return [*WORLD_REPORTED, *(c for c in columns if PLANNING.fullmatch(c))]


def aggregate(
    trials: pd.DataFrame, objectives: Sequence[ObjectiveSpec], params: Sequence[str]
) -> pd.DataFrame:
    """Per configuration: every metric's mean, std, n and 95 % interval over its seeds, and the
    paired comparisons of its probe accuracy.

    Only COMPLETE trials count; a configuration that ran a seed twice keeps its first trial.
    ``<metric> lo`` / ``hi``: the t-interval over seeds; a validation accuracy of a single run
    gets the Wilson interval over its validation images instead. Comparisons (see
    :func:`comparisons`): ``random`` (the same runs' strongest random init), ``pixels`` (raw
    pixels) and, per other strategy ``<kind>``, the configuration that differs only in its
    strategy (every ``strategy.*`` setting may differ), paired by seed.
    """
    metrics = reported(objectives, list(trials.columns))
    done = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    if done.empty:
        return pd.DataFrame(columns=["config_id", "strategy", "n", *params, *metrics])
    done = done.sort_values("trial").drop_duplicates(["config_id", "seed"], keep="first")
    metrics = [m for m in metrics if m in done.columns]
    groups = []
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
            "retry_of": ",".join(_numbers(group.get("retry_of"))),
            **{p: _plain(first.get(p)) for p in params},
            "state": "COMPLETE",
        }
        for metric in metrics:
            values = group[metric].astype(float)
            interval = stats.mean_ci(values)
            if len(values) == 1 and VALIDATION.get(metric) in group:
                interval = stats.wilson_ci(
                    float(values.iloc[0]), int(group[VALIDATION[metric]].iloc[0])
                )
            low, high = interval.low, interval.high
            if quantity(metric).unit == "%":  # a share: its interval stays within [0, 1]
                low, high = max(low, 0.0), min(high, 1.0)
            row[metric] = float(values.mean())
            row[f"{metric} std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{metric} lo"], row[f"{metric} hi"] = low, high
        groups.append(row)
    table = pd.DataFrame(groups)
    if CLAIM in done.columns:
        return comparisons(table, done, params)
    return planning_comparisons(table, done)


PLAN_PREDICTIONS = re.compile(r"pred/plan/test/(same|cross)/([a-z_]+)/([a-z_]+)")
VS_CEM = "vs_cem/"  # + <task>/<mode>/<arm>: a planning arm against CEM on the uncorrected model


def planning_comparisons(table: pd.DataFrame, done: pd.DataFrame) -> pd.DataFrame:
    """A world-model study's planning arms against ``cem`` (CEM on the uncorrected model), per
    configuration, task and mode, on the same test episodes pooled over seeds: every (seed,
    episode) is one pair, so three seeds of 100 episodes give 300.

    Columns ``vs_cem/<task>/<mode>/<arm>``: the success difference (arm minus cem), ``... p``:
    the exact McNemar p-value over the discordant pairs, Holm-adjusted over every such test in the
    table (``... p raw`` unadjusted), ``... test``: the test and its size, or why there is none.
    A configuration whose runs did not all keep their per-episode successes gets no column.
    """
    from jepa_lab.eval.planning import success_array

    if table.empty or "predictions" not in done:
        return table
    found: dict[str, dict[str, Any]] = {}
    family: dict[tuple[str, str], float] = {}
    for config, group in done.groupby("config_id", sort=False):
        kept = list(group["predictions"])
        if not kept or not all(isinstance(k, dict) for k in kept):
            continue
        for key in kept[0]:
            match = PLAN_PREDICTIONS.fullmatch(key)
            if match is None or match.group(3) == "cem":
                continue
            task, mode, arm = match.groups()
            cem = f"pred/plan/test/{task}/{mode}/cem"
            if not all(key in k and cem in k for k in kept):
                continue
            a = np.concatenate([success_array(k[key]) for k in kept])
            b = np.concatenate([success_array(k[cem]) for k in kept])
            if a.shape != b.shape:
                continue
            name = f"{VS_CEM}{task}/{mode}/{arm}"
            p, test = stats.mcnemar_exact(a, b, "episode")
            found.setdefault(config, {})[name] = float(a.mean() - b.mean())
            found[config][f"{name} test"] = f"{test}; {len(kept)} seeds, {len(a)} episodes"
            found[config][f"{name} p raw"] = p
            family[config, name] = p
    if not found:
        return table
    for (config, name), adjusted in zip(family, stats.holm(list(family.values())), strict=True):
        found[config][f"{name} p"] = float(adjusted)
    extra = pd.DataFrame.from_dict(found, orient="index")
    return table.merge(extra, left_on="config_id", right_index=True, how="left")


def comparisons(table: pd.DataFrame, done: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """``table`` with the paired comparisons of each configuration's probe accuracy.

    Per comparison ``<c>``: ``d_vs_<c>`` (mean per-seed difference, this configuration minus the
    other), ``d_vs_<c> lo/hi`` (t-interval over seeds), ``d_vs_<c> img lo/hi`` (bootstrap over
    test images, pooled over seeds), ``p_vs_<c>`` (Holm-adjusted over every test in the table;
    NaN where n allows no test), ``p_vs_<c> raw`` and ``test_vs_<c>`` (the test, or why none:
    ``"n = 2: no test"``). A strategy pair enters the Holm family once, whichever row shows it.
    """
    by_config = {c: g.set_index("seed") for c, g in done.groupby("config_id", sort=False)}
    shared = [p for p in params if not p.startswith("strategy.")]
    kinds = sorted(table["strategy"].unique())
    found: dict[tuple[int, str], stats.Comparison] = {}
    family: dict[Any, float] = {}  # one p-value per distinct comparison
    keys: dict[tuple[int, str], Any] = {}
    for i, row in table.iterrows():
        runs = by_config[row["config_id"]]
        for name, (metric, pred) in BASELINES.items():
            if metric in runs:
                found[(i, name)] = _paired(runs, runs, CLAIM, metric, "pred/probe", pred)
                keys[(i, name)] = (row["config_id"], name)
        for kind in kinds if len(kinds) > 1 else []:
            match = table["strategy"].to_numpy() == kind
            for p in shared:
                match &= _same(table[p], row[p])
            partner = table[match]
            if row["strategy"] == kind or len(partner) != 1:
                continue
            other = by_config[partner["config_id"].iloc[0]]
            seeds = runs.index.intersection(other.index)
            found[(i, kind)] = _paired(
                runs.loc[seeds], other.loc[seeds], CLAIM, CLAIM, "pred/probe", "pred/probe"
            )
            keys[(i, kind)] = frozenset((row["config_id"], partner["config_id"].iloc[0]))
    for key, result in found.items():
        family[keys[key]] = result.p
    adjusted = dict(zip(family, stats.holm(list(family.values())), strict=True))
    names = [*BASELINES, *(kinds if len(kinds) > 1 else [])]
    for name in names:
        cells = [found.get((i, name)) for i in table.index]
        if all(c is None for c in cells):
            continue
        nan = math.nan
        table[f"d_vs_{name}"] = [c.diff if c else nan for c in cells]
        table[f"d_vs_{name} lo"] = [c.low if c else nan for c in cells]
        table[f"d_vs_{name} hi"] = [c.high if c else nan for c in cells]
        table[f"d_vs_{name} img lo"] = [c.image_low if c else nan for c in cells]
        table[f"d_vs_{name} img hi"] = [c.image_high if c else nan for c in cells]
        table[f"p_vs_{name}"] = [
            adjusted[keys[(i, name)]] if (i, name) in found else nan for i in table.index
        ]
        table[f"p_vs_{name} raw"] = [c.p if c else nan for c in cells]
        table[f"test_vs_{name}"] = [c.test if c else "" for c in cells]
    return table


def _numbers(column: pd.Series | None) -> list[str]:
    """A column of trial numbers (None/NaN where absent) as texts, the absent ones left out."""
    if column is None:
        return []
    return [str(int(v)) for v in column if v is not None and not _isnan(v)]


def _paired(
    runs: pd.DataFrame,
    other: pd.DataFrame,
    metric: str,
    other_metric: str,
    pred: str,
    other_pred: str,
) -> stats.Comparison:
    """The comparison of ``runs[metric]`` with ``other[other_metric]``, rows paired by seed,
    with their per-image predictions where every run kept them."""
    correct = _correct(runs, pred), _correct(other, other_pred)
    a, b = runs[metric].astype(float).to_numpy(), other[other_metric].astype(float).to_numpy()
    if correct[0] is None or correct[1] is None:
        return stats.compare(a, b)
    return stats.compare(a, b, correct[0], correct[1])


def _correct(runs: pd.DataFrame, key: str) -> np.ndarray | None:
    """(S, M) booleans: run s's probe right on test image m; None if a run kept no predictions."""
    from jepa_lab.eval.probe import decode_classes

    if "predictions" not in runs:
        return None
    rows = []
    for kept in runs["predictions"]:
        if not isinstance(kept, dict) or key not in kept or "pred/labels" not in kept:
            return None
        predicted, labels = decode_classes(kept[key]), decode_classes(kept["pred/labels"])
        if predicted.shape != labels.shape:
            return None
        rows.append((predicted == labels).numpy())
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows)


def _plain(value: Any) -> Any:
    """Cell values pandas and Parquet can hold in one column: lists become their text."""
    if isinstance(value, list | tuple | dict):
        return str(value)
    return value


def _same(column: pd.Series, value: Any) -> np.ndarray:
    return np.array([a == value or (_isnan(a) and _isnan(value)) for a in column], bool)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


DRIFT = "drift/nmse/"  # + a correction: a world-model run's NMSE per horizon step
# Reference levels of the NMSE per horizon step, logged by every world-model run: series -> label
DRIFT_REFERENCES = {
    "drift/ref/nmse_mean": "mean latent",
    "drift/ref/nmse_random": "random real latent",
}
DRIFT_COLUMNS = ["panel", "config_id", "strategy", "correction", "reference", "k", "mean", "lo",
                 "hi", "n"]  # fmt: skip


def drift_table(runs: Sequence[Mapping[str, Any]], params: Sequence[str]) -> pd.DataFrame:
    """Per arm (a configuration x a correction) and horizon step k: the mean NMSE over seeds
    and its t-interval (NaN values, a collapsed run's, dropped; n counts the rest).

    ``runs``: :func:`jepa_lab.study.results.drift_runs` rows. ``panel`` names the configuration's
    settings other than its strategy (``loss.rollout_steps = 8``), so that within a panel each
    strategy has one configuration. Rows with ``reference`` True are the reference levels
    (:data:`DRIFT_REFERENCES`), over every run, with the reference's name as ``correction``.
    """
    others = [p for p in params if p != "strategy.kind"]
    values: dict[tuple[str, str, str, str, bool], dict[int, list[float]]] = {}
    for run in runs:
        settings = run["settings"] or {}
        panel = ", ".join(f"{p} = {_shown(settings.get(p))}" for p in others)
        for name, points in run["series"].items():
            if name.startswith(DRIFT):
                arm = (panel, run["config_id"], run["strategy"], name.removeprefix(DRIFT), False)
            elif name in DRIFT_REFERENCES:
                arm = ("", "", "", DRIFT_REFERENCES[name], True)
            else:
                continue
            for k, value in points:
                values.setdefault(arm, {}).setdefault(int(k), []).append(float(value))
    rows = []
    for (panel, config, strategy, correction, reference), by_k in values.items():
        for k in sorted(by_k):
            interval = stats.mean_ci(by_k[k])
            rows.append(dict(zip(DRIFT_COLUMNS, (
                panel, config, strategy, correction, reference, k, interval.estimate,
                interval.low, interval.high, interval.n), strict=True)))  # fmt: skip
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


def _shown(value: Any) -> str:
    """A setting's value in a label: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


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
    table: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    params: Sequence[str],
    trials: pd.DataFrame | None = None,
    front_ids: set[str] | None = None,
) -> pd.DataFrame:
    """The machine formats' columns (logged values: fractions for accuracies): trial, config id,
    MLflow run id, objectives (direction in the
    header; std, 95 % CI (lo, hi) and n where seeds exist), the front probability, parameters,
    probe accuracies on test and validation with their CIs, and the paired comparisons (mean
    difference, CI over seeds, CI over test images, Holm p-value or why there is none), state.
    With ``trials`` (``trials_frame``; ``export --all``): a row per failed trial too, and the
    columns ``fail_reason``, ``retry_of`` (the failed trials a row's trials retry) and
    ``retried_by`` (the trial that retried a failed one). With ``front_ids``: ``on_front``, whether
    each configuration is on the Pareto front."""
    seeded = not table.empty and int(table["n"].max()) > 1
    # columns gathered first and framed once (column by column, pandas warns of fragmentation)
    out: dict[str, Any] = {}
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
            out[f"{header} lo"] = table.get(f"{objective.metric} lo")
            out[f"{header} hi"] = table.get(f"{objective.metric} hi")
    if seeded:
        out["n"] = table.get("n")
    if front_ids is not None:
        out["on_front"] = [c in front_ids for c in table.get("config_id", [])]
    if "front_prob" in table:
        out["front_prob"] = table["front_prob"]
    for param in params:
        if param != "strategy.kind":  # that is the strategy column
            out[param] = table.get(param)
    taken = {o.metric for o in objectives}
    for metric in [*PROBES, *world_metrics(list(table.columns))]:
        if metric in table and metric not in taken:
            out[metric] = table[metric]
            if seeded:
                out[f"{metric} std"] = table[f"{metric} std"]
            if seeded or metric.endswith("val_acc"):  # .get: no interval without a trial
                out[f"{metric} lo"] = table.get(f"{metric} lo")
                out[f"{metric} hi"] = table.get(f"{metric} hi")
    for column in table.columns:
        if column.startswith(("d_vs_", "p_vs_", "test_vs_", VS_CEM)):
            out[column] = table[column]
    out["state"] = table.get("state")
    frame = pd.DataFrame(out, index=table.index)
    if trials is not None:
        frame = _with_failures(frame, table, trials, params, seeded)
    return frame.reset_index(drop=True)


def _with_failures(
    out: pd.DataFrame,
    table: pd.DataFrame,
    trials: pd.DataFrame,
    params: Sequence[str],
    seeded: bool,
) -> pd.DataFrame:
    out["fail_reason"] = ""
    out["retry_of"] = table.get("retry_of", pd.Series("", index=table.index, dtype=object))
    out["retried_by"] = ""
    failed = trials[trials["state"] == "FAIL"] if len(trials) else trials
    rows = []
    for _, trial in failed.sort_values("trial").iterrows() if len(failed) else []:
        row: dict[str, Any] = {
            "trial": int(trial["trial"]),
            "config_id": trial.get("config_id"),
            "strategy": trial.get("strategy"),
            **{p: _plain(trial.get(p)) for p in params if p != "strategy.kind"},
            "state": "FAIL",
            "fail_reason": trial.get("fail_reason") or "",
            "retry_of": ",".join(_numbers(pd.Series([trial.get("retry_of")]))),
            "retried_by": ",".join(_numbers(pd.Series([trial.get("retried_by")]))),
        }
        if seeded:
            row["trials"] = str(int(trial["trial"]))
        rows.append(row)
    if not rows:
        return out
    extra = pd.DataFrame(rows)
    return pd.concat(
        [out, extra[[c for c in out.columns if c in extra.columns]]], ignore_index=True
    )


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
        shown = table.astype(object).where(table.notna(), "–")
        text = shown.to_markdown(index=False, floatfmt=".4g") + "\n\n" + caption(meta) + "\n"
    elif fmt == "latex":
        legend = str(table.attrs.get("legend", ""))
        text = latex(table, caption(meta, legend), str(meta.get("study", "study")))
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


def paper_table(
    table: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    params: Sequence[str],
    front_ids: set[str],
) -> pd.DataFrame:
    """``aggregate``'s table as a paper shows it (Markdown, LaTeX): one text column per
    quantity, ``mean ± half-width of the 95 % CI (n)`` in its unit (% for accuracies, pp for
    differences), human headers, front membership, the baselines, diagnostics and paired
    comparisons (with the Holm p-value or why n allows no test); no trial or run ids, a dash
    where there is no value."""
    from jepa_lab.study.quantities import cell, header

    out = pd.DataFrame(index=table.index)
    out["strategy"] = table.get("strategy")
    for param in params:
        if param != "strategy.kind":
            out[param] = [_text(v) for v in table.get(param, [])]
    out["Pareto front"] = ["yes" if c in front_ids else "no" for c in table.get("config_id", [])]
    metrics = reported(objectives, list(table.columns))
    for metric in [m for m in metrics if m in table]:
        out[header(metric)] = [
            cell(metric, r[metric], r.get(f"{metric} lo"), r.get(f"{metric} hi"), r.get("n"))
            for _, r in table.iterrows()
        ]
    for column in [c for c in table.columns if c.startswith(VS_CEM) and " " not in c]:
        out[header(column)] = [cell(column, r[column], n=r.get("n")) for _, r in table.iterrows()]
        out[f"p (Holm, McNemar) {column.removeprefix(VS_CEM)}"] = [
            _p_or_reason(r.get(f"{column} p"), r.get(f"{column} test")) for _, r in table.iterrows()
        ]
    for column in [c for c in table.columns if c.startswith("d_vs_") and " " not in c]:
        name = column.removeprefix("d_vs_")
        out[header(column)] = [
            cell(column, r[column], r.get(f"{column} lo"), r.get(f"{column} hi"), r.get("n"))
            for _, r in table.iterrows()
        ]
        out[f"p (Holm) vs {name}"] = [_p(r, name) for _, r in table.iterrows()]
    return out.reset_index(drop=True)


def _text(value: Any) -> str:
    if value is None or _isnan(value):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _p(row: pd.Series, name: str) -> str:
    return _p_or_reason(row.get(f"p_vs_{name}"), row.get(f"test_vs_{name}"))


def _p_or_reason(p: Any, reason: Any) -> str:
    """A p-value to 2 digits, else why there is none, else a dash."""
    if isinstance(p, float) and math.isfinite(p):
        return f"{p:.2g}"
    return reason if isinstance(reason, str) and reason else "–"


LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
}  # fmt: skip


def _escape(text: Any) -> str:
    if text is None or _isnan(text):
        return "--"
    text = str(text)
    # ASCII "--" (an option's name) stays two hyphens; the en dash "–" is LaTeX's "--"
    return "".join(
        "-{}" if ch == "-" and text[k + 1 : k + 2] == "-" else LATEX_ESCAPES.get(ch, ch)
        for k, ch in enumerate(text)
    )


def _tex_cell(value: Any) -> str:
    """A cell: ``71.0 ± 2.5`` with the ± as a binary operator (math spacing, narrower than the
    two text spaces around it in prose)."""
    return _escape(_text(value)).replace(r" $\pm$ ", r"${}\pm{}$")


def latex(table: pd.DataFrame, text: str, study: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``) with ``text`` as its caption; a
    missing value is a dash, never NaN. A column name with newlines is a header of several
    lines."""
    numeric = [all(_text(v)[:1] in "+-–0123456789" for v in table[c]) for c in table.columns]
    align = "".join("r" if n else "l" for n in numeric)
    names = [str(c).split("\n") for c in table.columns]
    header = [
        " & ".join(_escape(n[k]) if k < len(n) else "" for n in names) + r" \\"
        for k in range(max(len(n) for n in names))
    ]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",  # local to the float: narrower than the default 6pt
        r"\begin{tabular}{" + align + "}",
        r"\toprule",
        *header,
        r"\midrule",
    ]
    for _, row in table.iterrows():
        lines.append(" & ".join(_tex_cell(v) for v in row) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _escape(text) + "}",
        r"\label{tab:" + "".join(c if c.isalnum() else "-" for c in study) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def caption(meta: Mapping[str, Any], legend: str = "") -> str:
    """What a table is read with: the study, seeds, the statistics and test, the ``legend`` of
    a table that has one (its n in a column of its own then), and a warning where the study is
    unfinished or its configurations have unequal n."""
    seeds = meta.get("seeds") or []
    counted = f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)})" if seeds else "seeds"
    warnings = " ".join(f"WARNING: {w}." for w in meta.get("warnings") or [])
    where_n = "column n" if legend else "parentheses"
    return (
        f"Study {meta.get('study')}: mean ± half-width of the 95 % CI over {counted}, n per "
        f"configuration in {where_n}; accuracies in %, differences in percentage points (pp), "
        "paired by seed. Test: paired t-test over seeds (exact McNemar on test images where "
        "n = 1), Holm-adjusted over the table; no p-value where n is too small. "
        + (legend + " " if legend else "")
        + _note(meta)
        + (" " + warnings if warnings else "")
    )


def _note(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("hypervolume_ci") or (math.nan, math.nan)
    interval = f" (95 % CI {low:.6g} to {high:.6g}, seeds resampled)" if math.isfinite(low) else ""
    return (
        f"Hypervolume {meta.get('hypervolume', math.nan):.6g}{interval} against reference point "
        f"{meta.get('reference_point')} ({', '.join(meta.get('objectives', []))})."
    )
