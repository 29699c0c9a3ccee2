"""The paper table that fits a page: the key columns of a study's configurations, the default of
``jepa-lab export -f latex`` (``--wide``: every column, :func:`jepa_lab.study.export.paper_table`).

Columns: the configuration (its strategy and the settings the study varies, ``*`` on the Pareto
front), n (seeds), the probe accuracy, its gain over the random-init encoder with the
Holm-adjusted paired p-value (where n allows a test), the raw-pixel probe, the study's other
objectives (an arrow gives each one's direction), and RankMe where no objective is a diagnostic;
each ``mean ± half-width of the 95 % CI`` in its unit, plain numbers to three significant
digits. Headers take short lines (name, qualifier, unit), so the table stays within a page's
text width (the main job's: 374 pt in ``\\small``, under the 397 pt of a 5.5 in text block) in
booktabs, without ``\\resizebox``.

:func:`from_export` reads an export's JSON back into the table it was made from, so a paper table
is rendered again from an archived export without its store (``docs/latex-table.tex``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study.export import CLAIM, short
from jepa_lab.study.quantities import cell, finite, quantity

# After the configuration and n: the claim, its gain over random init (with p), the raw-pixel
# baseline; then the study's objectives, then these diagnostics where no objective is one.
KEY = (CLAIM, "d_vs_random", "eval/pixel_probe_acc")
DIAGNOSTICS = ("diag/rankme",)
ARROWS = {"minimize": "↓", "maximize": "↑"}
LEGEND = (
    "*: on the Pareto front of the configurations' means; ↓/↑: the study's objectives "
    "(minimised/maximised)."
)
P_LEGEND = "p: Holm-adjusted p-value of the gain over random init, – where n allows no test."
WIDE = "Every column: jepa-lab export --wide."


def _configuration(row: pd.Series, params: Sequence[str], front_ids: set[str]) -> str:
    """``sigreg, ratio=0.6*``: the strategy and the varied settings (the last part of each
    dotted key, unless two share it), ``*`` on the front."""
    tails = [p.rsplit(".", 1)[-1] for p in params]
    names = tails if len(set(tails)) == len(tails) else list(params)
    parts = [str(row.get("strategy") or "–")]
    for name, param in zip(names, params, strict=True):
        value = row.get(param)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts) + ("*" if row.get("config_id") in front_ids else "")


def _p(row: pd.Series) -> str:
    p = row.get("p_vs_random")
    return f"{p:.2g}" if finite(p) else "–"


def compact_table(
    table: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    params: Sequence[str],
    front_ids: set[str],
) -> pd.DataFrame:
    """``aggregate``'s table as the page-width paper table (see the module docstring): text
    cells, headers of several lines joined by newlines, the legend in ``attrs["legend"]`` for
    the caption. The p column only where some configuration has a p-value."""
    shown = [p for p in params if p != "strategy.kind"]
    directions = {o.metric: o.direction for o in objectives}
    tested = any(finite(p) for p in table.get("p_vs_random", []))
    out = pd.DataFrame(index=table.index)
    out["configuration"] = [_configuration(r, shown, front_ids) for _, r in table.iterrows()]
    out["n"] = [str(int(n)) if finite(n) else "–" for n in table.get("n", [])]
    # RankMe where no objective is a diagnostic: the table keeps a collapse diagnostic
    diagnostics = [] if any(m.startswith("diag/") for m in directions) else list(DIAGNOSTICS)
    for metric in [m for m in dict.fromkeys([*KEY, *directions, *diagnostics]) if m in table]:
        top, *rest = quantity(metric).lines
        if metric in directions:
            top = f"{top} {ARROWS[directions[metric]]}"
        out["\n".join([top, *rest])] = [
            cell(metric, r[metric], r.get(f"{metric} lo"), r.get(f"{metric} hi"), significant=3)
            for _, r in table.iterrows()
        ]
        if metric == "d_vs_random" and tested:
            out["p\n(Holm)"] = [_p(r) for _, r in table.iterrows()]
    out = out.reset_index(drop=True)
    out.attrs["legend"] = LEGEND + (" " + P_LEGEND if tested else "") + " " + WIDE
    return out


def from_export(
    data: Mapping[str, Any],
) -> tuple[pd.DataFrame, list[ObjectiveSpec], list[str], set[str]]:
    """An export's JSON (``jepa-lab export -f json``: metadata and rows) back as ``aggregate``'s
    table, the objectives, the varied settings and the front's config ids. What the machine
    formats do not carry (diagnostics other than the objectives) stays absent."""
    objectives = []
    for named, reference in zip(data["objectives"], data["reference_point"], strict=True):
        metric, _, direction = str(named).rpartition(" (")
        objectives.append(
            ObjectiveSpec.model_validate(
                {"metric": metric, "direction": direction.rstrip(")"), "reference": reference}
            )
        )
    renamed = {
        f"{o.metric} ({short(o.direction)}){suffix}": f"{o.metric}{suffix}"
        for o in objectives
        for suffix in ("", " std", " lo", " hi")
    }
    table = pd.DataFrame(data["rows"]).rename(columns=renamed)
    if "n" not in table:  # one seed: the machine formats leave n out
        table["n"] = 1
    # the settings a study varies are dotted spec keys; metric columns have a slash
    params = [c for c in table.columns if "." in c and "/" not in c and " " not in c]
    on_front = table["on_front"].astype(bool) if "on_front" in table else []
    front_ids = set(table.loc[on_front, "config_id"]) if len(on_front) else set()
    return table, objectives, params, front_ids


def latex_of_export(data: Mapping[str, Any]) -> str:
    """The page-width LaTeX table of an export's JSON (``export -f json``), its caption from the
    export's metadata: what ``export -f latex`` gave on the study, less what the JSON lacks."""
    from jepa_lab.study.export import render

    table, objectives, params, front_ids = from_export(data)
    meta = {k: v for k, v in data.items() if k != "rows"}
    text = render(compact_table(table, objectives, params, front_ids), "latex", meta)
    assert text is not None  # without a path, render returns the text
    return text
