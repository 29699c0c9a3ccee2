"""One name and one unit per quantity, shared by ``train``, ``status``, the exports and the plots.

Accuracies are shown in percent, differences of accuracies in percentage points (pp);
diagnostics keep their own scale. Machine formats (CSV, JSON, Parquet) keep the logged values
(fractions) under their metric names and say so in their ``units`` metadata; the paper formats
(Markdown, LaTeX) and every plot use :func:`header` and :func:`scaled`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Quantity:
    label: str  # human name, e.g. "probe acc."
    unit: str  # "%", "pp" or "" (a plain number)
    scale: float  # logged value x scale = shown value
    brief: tuple[str, str] = ("", "")  # a narrow header's name and qualifier (default: label)

    @property
    def header(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def lines(self) -> tuple[str, ...]:
        """The header in short lines, for the page-width paper table: a name, a qualifier if
        any, the unit if any (``("raw-pixel", "probe", "(%)")``)."""
        top, qualifier = self.brief if self.brief[0] else (self.label, "")
        return tuple(p for p in (top, qualifier, f"({self.unit})" if self.unit else "") if p)


PERCENT, POINTS = 100.0, 100.0
QUANTITIES: dict[str, Quantity] = {
    "eval/probe_acc": Quantity("probe acc.", "%", PERCENT),
    "eval/probe_val_acc": Quantity("probe acc., validation", "%", PERCENT, ("probe acc.", "val.")),
    "eval/knn_acc": Quantity("kNN acc.", "%", PERCENT),
    "eval/random_probe_acc": Quantity(
        "random-init probe acc.", "%", PERCENT, ("random-init", "probe")
    ),
    "eval/random_probe_val_acc": Quantity("random-init probe acc., validation", "%", PERCENT),
    "eval/pixel_probe_acc": Quantity("raw-pixel probe acc.", "%", PERCENT, ("raw-pixel", "probe")),
    "eval/pixel_probe_val_acc": Quantity("raw-pixel probe acc., validation", "%", PERCENT),
    "eval/gain_over_random": Quantity(
        "gain over random init", "pp", POINTS, ("gain over", "random init")
    ),
    "curve/probe_acc": Quantity("probe acc.", "%", PERCENT),
    "diag/rankme": Quantity("RankMe", "", 1.0),
    "diag/std": Quantity("per-dim std", "", 1.0, ("per-dim", "std")),
    "diag/positional_share": Quantity("positional share", "%", PERCENT, ("positional", "share")),
    "diag/pred_loss": Quantity("prediction error (MSE)", "", 1.0, ("pred. error", "(MSE)")),
    "diag/sigreg_pooled": Quantity("SIGReg statistic, pooled", "", 1.0, ("SIGReg stat.", "pooled")),
    "diag/sigreg_regularised": Quantity(
        "SIGReg statistic, regularised", "", 1.0, ("SIGReg stat.", "regularised")
    ),
    "diag/train_loss_heldout": Quantity(
        "training loss, held-out", "", 1.0, ("training loss", "held-out")
    ),
    "diag/context_tokens": Quantity("context tokens per image", "", 1.0),
    "diag/target_tokens": Quantity("target tokens per image", "", 1.0),
    "deploy/int8_probe_acc": Quantity("INT8 probe acc.", "%", PERCENT),
    "deploy/int8_p99_ms": Quantity("INT8 p99 latency (ms)", "", 1.0),
    "deploy/fp32_p99_ms": Quantity("fp32 p99 latency (ms)", "", 1.0),
    "deploy/speedup_p50": Quantity("INT8 p50 speedup", "", 1.0),
    "deploy/int8_cos": Quantity("INT8 cosine to fp32", "", 1.0, ("INT8 cos.", "to fp32")),
    "deploy/int8_rel_l2": Quantity(
        "INT8 relative L2 to fp32", "", 1.0, ("INT8 rel. L2", "to fp32")
    ),
    "deploy/int8_probe_delta": Quantity("INT8 - fp32 probe acc.", "pp", POINTS),
    "wm/val_nmse_final": Quantity("30-step NMSE, validation", "", 1.0),
    "wm/val_success": Quantity("planning success, validation", "%", PERCENT),
    "wm/val_effort": Quantity("control effort, validation", "", 1.0),
    "diag/collapsed": Quantity("collapsed runs", "%", PERCENT),
    "diag/total_variance": Quantity("total variance", "", 1.0, ("total", "variance")),
    "train/seconds": Quantity("training time (s)", "", 1.0),
}
# Planning metrics of world models, plan/test/<task>/<mode>/<arm>/<name>: name -> (label, unit)
PLANNING_METRICS = {
    "success": ("success", "%"),
    "effort": ("control effort", ""),
    "smoothness": ("smoothness", ""),
    "seconds_per_episode": ("planning s/episode", ""),
}
COMPARED = {"random": "random init", "pixels": "raw pixels"}


def quantity(metric: str) -> Quantity:
    """The quantity of a metric; ``d_vs_<c>`` is a difference in pp; others are shown as named."""
    if metric in QUANTITIES:
        return QUANTITIES[metric]
    parts = metric.split("/")
    if metric.startswith("drift/nmse_k") and len(parts) == 3:  # drift/nmse_k30/knn
        k = parts[1].removeprefix("nmse_k")
        return Quantity(f"NMSE at k = {k}, {parts[2]}", "", 1.0, (f"NMSE k={k}", parts[2]))
    if metric.startswith("plan/") and len(parts) == 6 and parts[5] in PLANNING_METRICS:
        _, _, task, mode, arm, name = parts
        label, unit = PLANNING_METRICS[name]
        where = f"{task}-room, {arm}, {mode.replace('_', '-')}"
        return Quantity(f"{label}, {where}", unit, PERCENT if unit else 1.0, (label, where))
    if metric.startswith("vs_cem/") and len(parts) == 4:  # vs_cem/cross/receding/cem_knn
        _, task, mode, arm = parts
        where = f"{task}-room, {mode.replace('_', '-')}"
        return Quantity(f"Δ success, {arm} - cem, {where}", "pp", POINTS, (f"{arm} - cem", where))
    if metric.startswith("d_vs_"):
        name = metric.removeprefix("d_vs_")
        other = COMPARED.get(name, name)
        brief = ("gain over", other) if name == "random" else ("Δ probe acc.", f"vs {other}")
        return Quantity(f"Δ probe acc. vs {other}", "pp", POINTS, brief)
    return Quantity(metric, "", 1.0)


def header(metric: str) -> str:
    """``probe acc. (%)`` for ``eval/probe_acc``: the human name with its unit."""
    return quantity(metric).header


def units() -> dict[str, str]:
    """The unit each logged metric is stored in (machine formats keep the logged values)."""
    return {m: "fraction" if q.unit in ("%", "pp") else "" for m, q in QUANTITIES.items()}


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def cell(
    metric: str,
    mean: Any,
    low: Any = None,
    high: Any = None,
    n: Any = None,
    significant: int = 4,
) -> str:
    """``71.0 ± 1.9 (3)``: the mean and the half-width of its 95 % CI in the metric's unit, then
    n; a dash where there is no value. An interval that is not centred on the mean (a share's,
    cut at 0 % or 100 %) is shown by its ends: ``1.3 [0.0, 4.2] (3)``. Percentages and points get
    one decimal, plain numbers ``significant`` digits (the page-width paper table uses 3)."""
    if not finite(mean):
        return "–"
    q = quantity(metric)
    signed = q.unit == "pp"
    digits = 1 if q.unit else 0
    text = _number(q.scale * float(mean), digits, signed, significant)
    if finite(low) and finite(high):
        lo, hi, centre = (q.scale * float(v) for v in (low, high, mean))
        if math.isclose(hi - centre, centre - lo, rel_tol=1e-6, abs_tol=1e-9):
            text += f" ± {_number((hi - lo) / 2, digits, False, significant)}"
        else:
            ends = (_number(v, digits, signed, significant) for v in (lo, hi))
            text += " [{}, {}]".format(*ends)
    if finite(n):
        text += f" ({int(n)})"
    return text


def _number(value: float, digits: int, signed: bool, significant: int) -> str:
    """``digits`` decimals, or (0) ``significant`` digits, in e-notation when very large or
    small."""
    sign = "+" if signed else ""
    if digits:
        return f"{value:{sign}.{digits}f}"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:{sign}.{significant - 2}e}"
    text = f"{value:{sign}.{significant}g}"
    return f"{value:{sign}.0f}" if "e" in text else text  # 1117, not 1.12e+03
