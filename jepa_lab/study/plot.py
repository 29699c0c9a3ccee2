"""The plot of a study's configurations and their Pareto front: PNG (matplotlib) or
interactive HTML (plotly)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study.export import short


def plot(
    table: pd.DataFrame,
    front_rows: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    path: Path,
    title: str,
) -> Path:
    """The configurations and their Pareto front: PNG (matplotlib) or HTML (plotly) by suffix.

    Two objectives: one scatter with the front as its attainment staircase; more: one panel
    per pair of objectives, front configurations circled.
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
            axes.scatter(group[x.metric], group[y.metric], alpha=0.5, label=str(kind))
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
        axes.set_xlabel(f"{x.metric} ({short(x.direction)})")
        axes.set_ylabel(f"{y.metric} ({short(y.direction)})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium", wrap=True)
    figure.savefig(path, dpi=110)
    return path


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
    hover = [
        f"trial {t}<br>config {c}<br>{s}"
        for t, c, s in zip(table["trial"], table["config_id"], table["strategy"], strict=True)
    ]
    for col, (i, j) in enumerate(pairs, start=1):
        x, y = objectives[i], objectives[j]
        figure.add_trace(
            go.Scatter(
                x=table[x.metric],
                y=table[y.metric],
                mode="markers",
                text=hover,
                marker={
                    "symbol": ["star" if c in on_front else "circle" for c in table["config_id"]],
                    "size": [14 if c in on_front else 8 for c in table["config_id"]],
                },
                name="configurations (stars: Pareto front)",
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
