"""The plot of a study's configurations and their Pareto front: PNG (matplotlib) or
interactive HTML (plotly)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study.export import short
from jepa_lab.study.pareto import UNCERTAIN


def plot(
    table: pd.DataFrame,
    front_rows: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    path: Path,
    title: str,
) -> Path:
    """The configurations and their Pareto front: PNG (matplotlib) or HTML (plotly) by suffix.

    Two objectives: one scatter with the front as its attainment staircase; more: one panel
    per pair of objectives, front configurations circled. Each configuration carries error bars
    (its 95 % CI over seeds, ``<metric> lo/hi``, where it has them); front members whose
    bootstrap probability of staying on the front (``front_prob``) is below
    :data:`jepa_lab.study.pareto.UNCERTAIN` are circled in red, dashed.
    """
    # one panel per pair of objectives (a single objective: against itself)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    pairs = pairs or [(0, 0)]
    if path.suffix.lower() == ".html":
        return _plot_html(table, front_rows, objectives, pairs, path, title)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path.name}: plot to a .png or an .html file")
    from matplotlib.figure import Figure  # no pyplot: no global state

    figure = Figure(figsize=(5 * len(pairs), 4.2), layout="constrained")
    axes_list = figure.subplots(1, len(pairs), squeeze=False)[0]
    for axes, (i, j) in zip(axes_list, pairs, strict=True):
        x, y = objectives[i], objectives[j]
        for kind, group in table.groupby("strategy"):
            drawn = axes.scatter(group[x.metric], group[y.metric], alpha=0.5, label=str(kind))
            axes.errorbar(
                group[x.metric], group[y.metric], xerr=_err(group, x.metric),
                yerr=_err(group, y.metric), fmt="none", alpha=0.4, lw=1,
                ecolor=drawn.get_facecolor()[0],
            )  # fmt: skip
        if not front_rows.empty:
            ordered = front_rows.sort_values(x.metric)
            if len(objectives) == 2:  # the attainment staircase; projections of more have none
                style = "steps-post" if x.direction == "minimize" else "steps-pre"
                axes.plot(ordered[x.metric], ordered[y.metric], "k-", lw=1, drawstyle=style)
            axes.scatter(
                ordered[x.metric],
                ordered[y.metric],
                facecolors="none",
                edgecolors="k",
                s=90,
                label="Pareto front",
            )
            unsure = _uncertain(ordered)
            if unsure.any():
                axes.scatter(
                    ordered[x.metric][unsure], ordered[y.metric][unsure], facecolors="none",
                    edgecolors="r", linestyles="--", s=160,
                    label=f"front, P(front) < {UNCERTAIN:g}",
                )  # fmt: skip
        axes.set_xlabel(f"{x.metric} ({short(x.direction)})")
        axes.set_ylabel(f"{y.metric} ({short(y.direction)})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium", wrap=True)
    figure.savefig(path, dpi=110)
    return path


def _err(table: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(2, P) distances from the mean to the CI bounds, for ``errorbar``; None without CIs."""
    if f"{metric} lo" not in table:
        return None
    low = (table[metric] - table[f"{metric} lo"]).to_numpy(float)
    high = (table[f"{metric} hi"] - table[metric]).to_numpy(float)
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
) -> Path:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(pairs))
    on_front = set(front_rows["config_id"]) if not front_rows.empty else set()
    probability = table["front_prob"] if "front_prob" in table else [np.nan] * len(table)
    hover = [
        f"trial {t}<br>config {c}<br>{s}<br>P(front) {p:.2f}"
        for t, c, s, p in zip(
            table["trial"], table["config_id"], table["strategy"], probability, strict=True
        )
    ]
    unsure = set(table["config_id"][_uncertain(table)]) & on_front
    for col, (i, j) in enumerate(pairs, start=1):
        x, y = objectives[i], objectives[j]
        figure.add_trace(
            go.Scatter(
                x=table[x.metric],
                y=table[y.metric],
                mode="markers",
                text=hover,
                error_x=_plotly_err(table, x.metric),
                error_y=_plotly_err(table, y.metric),
                marker={
                    "symbol": [
                        "star-open" if c in unsure else "star" if c in on_front else "circle"
                        for c in table["config_id"]
                    ],
                    "size": [14 if c in on_front else 8 for c in table["config_id"]],
                },
                name=f"configurations (stars: Pareto front; open: P(front) < {UNCERTAIN:g})",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        figure.update_xaxes(title_text=f"{x.metric} ({short(x.direction)})", row=1, col=col)
        figure.update_yaxes(title_text=f"{y.metric} ({short(y.direction)})", row=1, col=col)
    figure.update_layout(title=title)
    figure.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def _plotly_err(table: pd.DataFrame, metric: str) -> dict | None:
    err = _err(table, metric)
    if err is None:
        return None
    return {"type": "data", "symmetric": False, "array": err[1], "arrayminus": err[0]}
