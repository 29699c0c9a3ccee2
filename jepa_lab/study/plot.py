"""Plots a paper can use: a study's configurations and their Pareto front, and probe curves
of runs (accuracy against training images). PNG, SVG, PDF (matplotlib) or interactive HTML
(plotly, loaded once from a ``plotly.min.js`` written beside the HTML files).

Each configuration is a point with error bars (its 95 % CI over seeds) and its per-seed points
shown faintly; colour encodes the strategy, the same in every panel and format
(:data:`COLOURS`); axes are labelled with human names and units (:mod:`.quantities`); where an
axis is a probe accuracy the random-init and raw-pixel baselines are reference lines; an axis
is never narrower than :data:`MIN_SPAN_PCT` percentage points (or 10 % of its value), and the
plot says when it was widened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study.export import short
from jepa_lab.study.pareto import UNCERTAIN
from jepa_lab.study.quantities import quantity

STATIC = (".png", ".svg", ".pdf")
SUFFIXES = (*STATIC, ".html")
COLOURS = {"ema": "#1f77b4", "sigreg": "#d62728", "none": "#7f7f7f"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
# Reference lines on probe-accuracy axes: metric -> (its random-init, its raw-pixel baseline).
REFERENCES = {
    "eval/probe_acc": ("eval/random_probe_acc", "eval/pixel_probe_acc"),
    "eval/probe_val_acc": ("eval/random_probe_val_acc", "eval/pixel_probe_val_acc"),
}
MIN_SPAN_PCT = 5.0  # an accuracy axis spans at least this many percentage points


def colour(strategy: str, known: Sequence[str] = ()) -> str:
    """The strategy's colour: fixed for ema, sigreg, none; others by their place in ``known``."""
    if strategy in COLOURS:
        return COLOURS[strategy]
    others = sorted(k for k in known if k not in COLOURS)
    index = others.index(strategy) if strategy in others else len(others)
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]


def axis_label(objective: ObjectiveSpec) -> str:
    """``probe acc., validation (%), max``: the human name, its unit, the direction."""
    return f"{quantity(objective.metric).header}, {short(objective.direction)}"


def axis_range(values: np.ndarray, metric: str) -> tuple[float, float, bool]:
    """(low, high, widened): the data's range with a margin, widened to the minimum span."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return 0.0, 1.0, False
    low, high = float(values.min()), float(values.max())
    q = quantity(metric)
    least = MIN_SPAN_PCT if q.unit in ("%", "pp") else 0.1 * max(abs(low), abs(high), 1e-12)
    margin = 0.08 * (high - low)
    if high - low + 2 * margin >= least:
        return low - margin, high + margin, False
    centre = (low + high) / 2
    return centre - least / 2, centre + least / 2, True


def _references(table: pd.DataFrame, metric: str) -> list[tuple[str, float]]:
    """The baselines drawn as lines where an axis is ``metric`` (a probe accuracy): (name, mean
    of its logged values, scaled to the axis's unit)."""
    found = []
    for name, base in zip(
        ("random init", "raw pixels"), REFERENCES.get(metric, ("", "")), strict=True
    ):
        if base in table and np.isfinite(table[base]).any():
            found.append((name, float(np.nanmean(_scaled(table, base)))))
    return found


def _scaled(table: pd.DataFrame, metric: str, suffix: str = "") -> np.ndarray:
    column = f"{metric}{suffix}"
    if column not in table:
        return np.full(len(table), np.nan)
    return table[column].to_numpy(float) * quantity(metric).scale


def plot(
    table: pd.DataFrame,
    front_rows: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    path: Path,
    title: str,
    trials: pd.DataFrame | None = None,
    warnings: Sequence[str] = (),
) -> Path:
    """The configurations and their Pareto front, by ``path``'s suffix (.png, .svg, .pdf,
    .html).

    Two objectives: one scatter with the front as its attainment staircase; more: one panel
    per pair of objectives, front configurations circled. ``trials`` (``trials_frame``): the
    per-seed points, drawn faintly. Front members whose bootstrap probability of staying on the
    front (``front_prob``) is below :data:`UNCERTAIN` are circled in red, dashed. ``warnings``
    (an unfinished study, unequal n) are printed under the title.
    """
    # one panel per pair of objectives (a single objective: against itself)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    pairs = pairs or [(0, 0)]
    suffix = _suffix(path)
    seeds = _seed_points(trials)
    if suffix == ".html":
        return _plot_html(table, front_rows, objectives, pairs, path, title, seeds, warnings)
    from matplotlib.figure import Figure  # no pyplot: no global state

    figure = Figure(figsize=(5.2 * len(pairs), 4.4), layout="constrained")
    axes_list = figure.subplots(1, len(pairs), squeeze=False)[0]
    kinds = sorted(str(k) for k in table["strategy"].unique())
    for axes, (i, j) in zip(axes_list, pairs, strict=True):
        x, y = objectives[i], objectives[j]
        notes = []
        for kind, group in table.groupby("strategy"):
            c = colour(str(kind), kinds)
            if seeds is not None and x.metric in seeds and y.metric in seeds:
                mine = seeds[seeds["strategy"] == kind]
                axes.scatter(_scaled(mine, x.metric), _scaled(mine, y.metric), s=12, color=c,
                             alpha=0.25, linewidths=0, label="_seeds")  # fmt: skip
            axes.errorbar(
                _scaled(group, x.metric), _scaled(group, y.metric),
                xerr=_err(group, x.metric), yerr=_err(group, y.metric),
                fmt="o", color=c, ecolor=c, elinewidth=1, capsize=2, ms=6, label=str(kind),
            )  # fmt: skip
        for metric, line in ((x.metric, axes.axvline), (y.metric, axes.axhline)):
            for name, value in _references(table, metric):
                style = "--" if name == "random init" else ":"
                line(value, color="0.35", ls=style, lw=1, label=f"{name} (baseline)")
        if not front_rows.empty:
            ordered = front_rows.sort_values(x.metric)
            fx, fy = _scaled(ordered, x.metric), _scaled(ordered, y.metric)
            if len(objectives) == 2:  # the attainment staircase; projections of more have none
                style = "steps-post" if x.direction == "minimize" else "steps-pre"
                axes.plot(fx, fy, "k-", lw=1, drawstyle=style, label="_staircase")
            axes.scatter(fx, fy, facecolors="none", edgecolors="k", s=110, label="Pareto front")
            unsure = _uncertain(ordered)
            if unsure.any():
                axes.scatter(
                    fx[unsure], fy[unsure], facecolors="none", edgecolors="r", linestyles="--",
                    s=180, label=f"front, P(front) < {UNCERTAIN:g}",
                )  # fmt: skip
        for metric, setter, name in (
            (x.metric, axes.set_xlim, "x"),
            (y.metric, axes.set_ylim, "y"),
        ):
            low, high, widened = axis_range(_extent(table, seeds, metric), metric)
            setter(low, high)
            if widened:
                unit = quantity(metric).unit
                notes.append(f"{name} range narrow: widened to {high - low:.3g} {unit}".rstrip())
        axes.set_xlabel(axis_label(x))
        axes.set_ylabel(axis_label(y))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        if notes:
            axes.text(0.01, 0.01, "; ".join(notes), transform=axes.transAxes, fontsize="x-small",
                      va="bottom", color="0.3")  # fmt: skip
    figure.suptitle("\n".join([title, *warnings]), fontsize="medium", wrap=True)
    figure.savefig(path, dpi=130, metadata=_metadata(suffix, title, warnings))
    return path


def _metadata(suffix: str, title: str, warnings: Sequence[str]) -> dict[str, str]:
    text = "; ".join([title, *warnings])
    if suffix == ".png":
        return {"Title": title, "Description": text}
    if suffix == ".svg":
        return {"Title": title, "Description": text}
    return {"Title": title, "Subject": text}


def _seed_points(trials: pd.DataFrame | None) -> pd.DataFrame | None:
    if trials is None or trials.empty or "state" not in trials:
        return None
    done = trials[trials["state"] == "COMPLETE"].sort_values("trial")
    return done.drop_duplicates(["config_id", "seed"], keep="first")  # as aggregate counts them


def _extent(table: pd.DataFrame, seeds: pd.DataFrame | None, metric: str) -> np.ndarray:
    parts = [_scaled(table, metric), _scaled(table, metric, " lo"), _scaled(table, metric, " hi")]
    if seeds is not None and metric in seeds:
        parts.append(_scaled(seeds, metric))
    for base in REFERENCES.get(metric, ()):
        parts.append(_scaled(table, base))
    return np.concatenate(parts)


def _err(table: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(2, P) distances from the mean to the CI bounds, for ``errorbar``; None without CIs."""
    if f"{metric} lo" not in table:
        return None
    scale = quantity(metric).scale
    low = scale * (table[metric] - table[f"{metric} lo"]).to_numpy(float)
    high = scale * (table[f"{metric} hi"] - table[metric]).to_numpy(float)
    return np.nan_to_num(np.stack([low, high]).clip(min=0))


def _uncertain(table: pd.DataFrame) -> np.ndarray:
    """Rows whose front probability is known and below ``UNCERTAIN``."""
    if "front_prob" not in table:
        return np.zeros(len(table), bool)
    return (table["front_prob"].astype(float) < UNCERTAIN).to_numpy()


def _plot_html(
    table: pd.DataFrame,
    front_rows: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    pairs: list[tuple[int, int]],
    path: Path,
    title: str,
    seeds: pd.DataFrame | None,
    warnings: Sequence[str],
) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(pairs))
    on_front = set(front_rows["config_id"]) if not front_rows.empty else set()
    unsure = set(table["config_id"][_uncertain(table)]) & on_front
    kinds = sorted(str(k) for k in table["strategy"].unique())
    for col, (i, j) in enumerate(pairs, start=1):
        x, y = objectives[i], objectives[j]
        for kind, group in table.groupby("strategy"):
            c = colour(str(kind), kinds)
            if seeds is not None and x.metric in seeds and y.metric in seeds:
                mine = seeds[seeds["strategy"] == kind]
                figure.add_trace(go.Scatter(
                    x=_scaled(mine, x.metric), y=_scaled(mine, y.metric), mode="markers",
                    marker={"color": c, "size": 5, "opacity": 0.3}, name=f"{kind} seeds",
                    legendgroup=str(kind), showlegend=col == 1, hoverinfo="skip",
                ), row=1, col=col)  # fmt: skip
            ids = list(group["config_id"])
            probability = group["front_prob"] if "front_prob" in group else [np.nan] * len(group)
            hover = [f"{kind}, n = {n}<br>P(front) {p:.2f}"
                     for n, p in zip(group["n"], probability, strict=True)]  # fmt: skip
            figure.add_trace(go.Scatter(
                x=_scaled(group, x.metric), y=_scaled(group, y.metric), mode="markers",
                text=hover, error_x=_plotly_err(group, x.metric),
                error_y=_plotly_err(group, y.metric), name=str(kind), legendgroup=str(kind),
                marker={"color": c, "size": [14 if k in on_front else 9 for k in ids],
                        "symbol": ["star-open" if k in unsure else "star" if k in on_front
                                   else "circle" for k in ids]},
                showlegend=col == 1,
            ), row=1, col=col)  # fmt: skip
        for metric, add in ((x.metric, figure.add_vline), (y.metric, figure.add_hline)):
            for name, value in _references(table, metric):
                dash = "dash" if name == "random init" else "dot"
                add(value, line={"color": "#595959", "dash": dash, "width": 1},
                    annotation_text=name, row=1, col=col)  # fmt: skip
        for metric, update in ((x.metric, figure.update_xaxes), (y.metric, figure.update_yaxes)):
            low, high, _ = axis_range(_extent(table, seeds, metric), metric)
            objective = x if metric == x.metric else y
            update(title_text=axis_label(objective), range=[low, high], row=1, col=col)
    subtitle = "<br>".join(["stars: Pareto front; open: P(front) < " + f"{UNCERTAIN:g}", *warnings])
    figure.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>"})
    # plotly.min.js once beside the HTML files (offline, a few kB per plot), not inline per plot
    figure.write_html(path, include_plotlyjs="directory", full_html=True)
    return path


def _plotly_err(table: pd.DataFrame, metric: str) -> dict | None:
    err = _err(table, metric)
    if err is None:
        return None
    return {"type": "data", "symmetric": False, "array": err[1], "arrayminus": err[0]}


def plot_curves(
    curves: Mapping[str, tuple[str, Sequence[tuple[float, float]]]], path: Path, title: str
) -> Path:
    """Probe curves of runs: ``curves`` run name -> (strategy, [(training images, probe
    accuracy as a fraction)]), one line per run coloured by its strategy."""
    suffix = _suffix(path)
    kinds = sorted({kind for kind, _ in curves.values()})
    label = quantity("curve/probe_acc").header
    if suffix == ".html":
        import plotly.graph_objects as go

        figure = go.Figure()
        for name, (kind, points) in curves.items():
            xs, ys = zip(*points, strict=True) if points else ((), ())
            line = {"color": colour(kind, kinds)}
            shown_ys = [100 * v for v in ys]
            trace = go.Scatter(x=xs, y=shown_ys, mode="lines+markers", name=name, line=line)
            figure.add_trace(trace)
        figure.update_layout(title=title, xaxis_title="training images",
                             yaxis_title=label)  # fmt: skip
        figure.write_html(path, include_plotlyjs="directory", full_html=True)
        return path
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.2), layout="constrained")
    axes = figure.subplots()
    shown: set[str] = set()
    for _name, (kind, points) in curves.items():
        xs, ys = zip(*points, strict=True) if points else ((), ())
        axes.plot(xs, [100 * v for v in ys], "-o", ms=3, color=colour(kind, kinds), alpha=0.8,
                  label=kind if kind not in shown else "_run")  # fmt: skip
        shown.add(kind)
    axes.set_xlabel("training images")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.savefig(path, dpi=130)
    return path


LINESTYLES = {"none": "-", "renorm": "--", "knn": ":"}  # drift: line style by correction
DASHES = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}  # the same in plotly
REFERENCE_STYLES = ("--", ":")  # drift's reference levels, grey, in DRIFT_REFERENCES order
DRIFT_AXIS = "latent drift, NMSE (squared error / total variance)"
DRIFT_NOTE = "mean over seeds, band: 95 % t-interval"


LOG_SPAN = 30.0  # the drift axis turns logarithmic when its curves span more than this ratio


def drift_floor(table: pd.DataFrame) -> float | None:
    """None for a linear drift axis; else the log axis's floor (half the smallest positive mean),
    which band edges at or below zero are clipped to. Log when the positive means span more than
    :data:`LOG_SPAN`: one exploding arm then no longer flattens the others."""
    means = table["mean"].to_numpy(float)
    positive = means[np.isfinite(means) & (means > 0)]
    if positive.size == 0 or positive.max() <= LOG_SPAN * positive.min():
        return None
    return float(positive.min()) / 2


def linestyle(correction: str) -> str:
    """The correction's line style: fixed for none, renorm, knn; dash-dot for any other."""
    return LINESTYLES.get(correction, "-.")


def _drift_arms(rows: pd.DataFrame, kinds: list[str]) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(strategy, correction, legend label, rows by k) of a panel's arms: by strategy, then
    correction (none, renorm, knn, others); a collapsed arm (NaN on every seed) says so."""
    order = [*LINESTYLES]
    arms = []
    for (strategy, correction), arm in rows.groupby(["strategy", "correction"], sort=False):
        fix = "no correction" if correction == "none" else f"{correction} correction"
        collapsed = not np.isfinite(arm["mean"].to_numpy(float)).any()
        label = f"{strategy}, {fix}" + (": collapsed (NaN NMSE)" if collapsed else "")
        arms.append((str(strategy), str(correction), label, arm.sort_values("k")))
    rank = {c: order.index(c) if c in order else len(order) for _, c, _, _ in arms}
    return sorted(arms, key=lambda a: (kinds.index(a[0]), rank[a[1]], a[1]))


def plot_drift(table: pd.DataFrame, path: Path, title: str, warnings: Sequence[str] = ()) -> Path:
    """Latent drift per horizon step, by ``path``'s suffix (.png, .svg, .pdf, .html).

    ``table``: :func:`jepa_lab.study.export.drift_table`. One curve per arm (configuration x
    correction): the mean NMSE over seeds, its 95 % t-interval over seeds as a band; colour by
    strategy (:data:`COLOURS`), line style by correction (:data:`LINESTYLES`); one panel per
    setting of the study's other keys; the reference levels in grey. An arm whose NMSE is NaN on
    every seed (collapsed) is named in the legend, with nothing drawn.
    """
    suffix = _suffix(path)
    is_reference = table["reference"].astype(bool)
    arms, references = table[~is_reference], table[is_reference]
    panels = list(dict.fromkeys(arms["panel"]))
    kinds = sorted(str(k) for k in arms["strategy"].unique())
    levels = [(name, ref.sort_values("k"), style) for (name, ref), style in zip(
        references.groupby("correction", sort=False), REFERENCE_STYLES, strict=False)]  # fmt: skip
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    floor = drift_floor(table)
    log = floor is not None
    if log:
        arms = arms.assign(lo=arms["lo"].where(arms["lo"] > floor, floor))
    axis = DRIFT_AXIS + (", log scale" if log else "")
    if suffix == ".html":
        shape = (rows, cols)
        return _drift_html(arms, levels, panels, kinds, shape, path, title, warnings, axis, log)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * cols, 4.2 * rows), layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False, sharey=True)
    for axes, panel in zip(grid.flat, panels, strict=False):
        for strategy, correction, label, arm in _drift_arms(arms[arms["panel"] == panel], kinds):
            c, k = colour(strategy, kinds), arm["k"].to_numpy(int)
            axes.plot(k, arm["mean"].to_numpy(float), color=c, ls=linestyle(correction), lw=1.5,
                      label=label)  # fmt: skip
            low, high = arm["lo"].to_numpy(float), arm["hi"].to_numpy(float)
            if (np.isfinite(low) & np.isfinite(high)).any():
                axes.fill_between(k, low, high, color=c, alpha=0.15, lw=0, label="_ci")
        for name, ref, style in levels:
            axes.plot(ref["k"].to_numpy(int), ref["mean"].to_numpy(float), color="0.35", ls=style,
                      lw=1, label=f"{name} (reference)")  # fmt: skip
        if panel:
            axes.set_title(panel, fontsize="small")
        axes.set_xlabel("horizon step k")
        if log:
            axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    for axes in grid[:, 0]:
        axes.set_ylabel(axis)
    for axes in grid.flat[len(panels) :]:
        axes.set_visible(False)
    figure.suptitle("\n".join([title, DRIFT_NOTE, *warnings]), fontsize="medium", wrap=True)
    figure.savefig(path, dpi=130, metadata=_metadata(suffix, title, warnings))
    return path


def _drift_html(
    arms: pd.DataFrame,
    levels: list[tuple[str, pd.DataFrame, str]],
    panels: list[str],
    kinds: list[str],
    shape: tuple[int, int],
    path: Path,
    title: str,
    warnings: Sequence[str],
    axis: str,
    log: bool,
) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows, cols = shape
    figure = make_subplots(rows=rows, cols=cols, shared_yaxes=True,
                           subplot_titles=[p or " " for p in panels])  # fmt: skip
    shown: set[str] = set()
    for i, panel in enumerate(panels):
        where = {"row": i // cols + 1, "col": i % cols + 1}
        for strategy, correction, label, arm in _drift_arms(arms[arms["panel"] == panel], kinds):
            c, k = colour(strategy, kinds), arm["k"].to_numpy(int)
            low, high = arm["lo"].to_numpy(float), arm["hi"].to_numpy(float)
            band = np.isfinite(low) & np.isfinite(high)
            if band.any():
                figure.add_trace(go.Scatter(
                    x=[*k[band], *k[band][::-1]], y=[*high[band], *low[band][::-1]],
                    fill="toself", fillcolor=_rgba(c, 0.15), line={"width": 0}, hoverinfo="skip",
                    name=f"{label}, 95 % CI", legendgroup=label, showlegend=False,
                ), **where)  # fmt: skip
            figure.add_trace(go.Scatter(
                x=k, y=arm["mean"].to_numpy(float), mode="lines", name=label, legendgroup=label,
                line={"color": c, "dash": DASHES[linestyle(correction)]},
                showlegend=label not in shown, text=[f"n = {n}" for n in arm["n"]],
            ), **where)  # fmt: skip
            shown.add(label)
        for name, ref, style in levels:
            figure.add_trace(go.Scatter(
                x=ref["k"], y=ref["mean"], mode="lines", name=f"{name} (reference)",
                line={"color": "#595959", "dash": DASHES[style], "width": 1},
                legendgroup=f"reference {name}", showlegend=i == 0,
            ), **where)  # fmt: skip
        figure.update_xaxes(title_text="horizon step k", **where)
    figure.update_yaxes(title_text=axis, col=1)
    if log:
        figure.update_yaxes(type="log")
    subtitle = "<br>".join([DRIFT_NOTE, *warnings])
    figure.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>"})
    figure.write_html(path, include_plotlyjs="directory", full_html=True)
    return path


def _suffix(path: Path) -> str:
    """``path``'s suffix, lower-case, if a plot can be written in that format."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path.name}: plot to a .png, .svg, .pdf or an .html file")
    return suffix


def _rgba(hex_colour: str, alpha: float) -> str:
    """``#1f77b4`` -> ``rgba(31,119,180,0.15)`` (plotly's fill colours)."""
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"
