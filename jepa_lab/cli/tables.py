"""A study on the terminal (rich): the progress bar over its trials, the per-configuration summary
and Pareto-front tables, and the report a run ends with."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jepa_lab.study.session import Session


def _fmt(value: Any, std: Any = math.nan, n: int | None = None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    scale, unit = (100.0, " %") if pct else (1.0, "")
    text = f"{scale * value:.2f}" if pct else f"{value:.4g}"
    if isinstance(std, float) and not math.isnan(std):
        text += f" ± {scale * std:.2f}" if pct else f" ± {std:.2g}"
    if n is not None and n > 1:
        text += f" ({n})"
    return text + unit


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ci(value: Any, low: Any, high: Any, pct: bool = True, signed: bool = False) -> str:
    """``71.00 [69.12, 72.88] %``: a value with its 95 % interval (``-`` where there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    scale, unit = (100.0, " %") if pct else (1.0, "")
    form = "+.2f" if signed else ".2f"
    text = f"{scale * value:{form}}"
    if isinstance(low, float) and math.isfinite(low) and isinstance(high, float):
        text += f" [{scale * low:{form}}, {scale * high:{form}}]"
    return text + unit


def _difference(row: Any, name: str) -> str:
    """A paired difference: CI over seeds, CI over test images, then the Holm p or the reason."""
    text = _ci(row.get(f"d_vs_{name}"), row.get(f"d_vs_{name} lo"), row.get(f"d_vs_{name} hi"),
               signed=True)  # fmt: skip
    low, high = row.get(f"d_vs_{name} img lo"), row.get(f"d_vs_{name} img hi")
    if isinstance(low, float) and math.isfinite(low):
        text += f" img [{100 * low:+.2f}, {100 * high:+.2f}]"
    p = row.get(f"p_vs_{name}")
    if isinstance(p, float) and math.isfinite(p):
        return text + f"; p_Holm {p:.2g}"
    reason = row.get(f"test_vs_{name}")
    return text + (f"; {reason}" if isinstance(reason, str) and reason else "")


def summary_table(summary: Any, session: Session) -> Any:
    """Per configuration: the probe on test (mean [95 % CI over seeds]) and on validation (its
    CI), the paired differences to the strongest random init, to raw pixels and to the other
    strategies (CI over seeds, CI over test images, Holm p-value or why n allows none), the
    front probability, and the collapse diagnostics."""
    from rich.table import Table

    if session.plan.world:
        return world_summary_table(summary, session)
    params = _varied(summary, session)
    table = Table(
        title=f"study {session.plan.name}: {len(summary)} configurations; differences are "
        "this row minus the other, paired by seed, in points [95 % CI over seeds] img [over "
        "test images]"
    )
    probes = [("probe (test)", "eval/probe_acc"), ("probe (val)", "eval/probe_val_acc")]
    diagnostics = [
        ("RankMe", "diag/rankme"),
        ("per-dim std", "diag/std"),
        ("SIGReg stat. (pooled)", "diag/sigreg_pooled"),
        ("pos. share", "diag/positional_share"),
        ("pred. loss", "diag/pred_loss"),
    ]
    compared = [c.removeprefix("test_vs_") for c in summary.columns if c.startswith("test_vs_")]
    labels = {"random": "vs random init", "pixels": "vs raw pixels"}
    table.add_column("strategy")
    for p in params:
        table.add_column(p)
    table.add_column("n", justify="right")
    for name, _ in probes:
        table.add_column(name, justify="right")
    for name in compared:
        table.add_column(labels.get(name, f"vs {name}"), justify="right")
    if "front_prob" in summary:
        table.add_column("P(front)", justify="right")
    for name, _ in diagnostics:
        table.add_column(name, justify="right")
    for _, row in summary.iterrows():
        cells = [_cell(row.get("strategy")), *[_cell(row.get(p)) for p in params]]
        cells.append(str(int(row["n"])))
        cells += [_ci(row.get(m), row.get(f"{m} lo"), row.get(f"{m} hi")) for _, m in probes]
        cells += [_difference(row, name) for name in compared]
        if "front_prob" in summary:
            cells.append(_cell(row.get("front_prob")))
        cells += [_fmt(row.get(m), row.get(f"{m} std")) for _, m in diagnostics]
        table.add_row(*cells)
    return table


def _varied(summary: Any, session: Session) -> list[str]:
    """The study's settings other than the strategy that differ between configurations."""
    from jepa_lab.study.results import setting_keys

    return [
        p
        for p in setting_keys(session.plan)
        if p != "strategy.kind" and p in summary and summary[p].nunique() > 1
    ]


def world_summary_table(summary: Any, session: Session) -> Any:
    """A world-model study per configuration: planning success on the test episodes per task
    and arm (first planning mode; mean [95 % CI over seeds]), 30-step NMSE under each
    correction, and the collapse diagnostics."""
    from rich.table import Table

    from jepa_lab.study.export import PLANNING, VS_CEM

    params = _varied(summary, session)
    success = [c for c in summary.columns if PLANNING.fullmatch(c) and c.endswith("/success")]
    mode = success[0].split("/")[3] if success else ""
    success = [c for c in success if c.split("/")[3] == mode]
    versus = [
        c
        for c in summary.columns
        if c.startswith(VS_CEM) and " " not in c and c.split("/")[2] == mode
    ]
    drift = [c for c in summary.columns if c.startswith("drift/nmse_k30/") and " " not in c]
    table = Table(
        title=f"study {session.plan.name}: {len(summary)} configurations; planning success on "
        f"the test episodes (same / cross room, {mode or 'no planning'}), mean ± half-width of "
        "the 95 % CI over seeds; an arm - cem: pooled over seeds' episodes, exact McNemar"
    )
    columns = [
        *(f"{c.split('/')[2]} {c.split('/')[4]} (%)" for c in success),
        *(f"{c.split('/')[1]} {c.split('/')[3]} - cem (pp)" for c in versus),
        *(f"NMSE k=30 {c.rsplit('/', 1)[1]}" for c in drift),
        "RankMe",
        "per-dim std",
        "collapsed (%)",
    ]
    diagnostics = [*drift, "diag/rankme", "diag/std", "diag/collapsed"]
    for name in ["strategy", *params, "n", *columns]:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for _, row in summary.iterrows():
        cells = [_cell(row.get("strategy")), *[_cell(row.get(p)) for p in params]]
        cells.append(str(int(row["n"])))
        cells += [_with_ci(row, m) for m in success]
        cells += [_versus(row, c) for c in versus]
        cells += [_with_ci(row, m) for m in diagnostics]
        table.add_row(*cells)
    return table


def _with_ci(row: Any, metric: str) -> str:
    """``50.0 ± 9.8 (3)``: a metric's mean with its 95 % CI over seeds, in its unit."""
    from jepa_lab.study.quantities import cell

    return cell(metric, row.get(metric), row.get(f"{metric} lo"), row.get(f"{metric} hi"),
                significant=3)  # fmt: skip


def _versus(row: Any, column: str) -> str:
    """A planning arm against cem, pooled over seeds: the difference, then the Holm-adjusted
    McNemar p or why there is none."""
    diff = row.get(column)
    if not isinstance(diff, float) or math.isnan(diff):
        return "-"
    p = row.get(f"{column} p")
    if isinstance(p, float) and math.isfinite(p):
        return f"{100 * diff:+.1f} (p_Holm {p:.2g})"
    return f"{100 * diff:+.1f} (no test)"  # why: the exports' "test" column


def front_table(front: Any, session: Session) -> Any:
    from rich.table import Table

    from jepa_lab.study.export import short
    from jepa_lab.study.quantities import cell, header
    from jepa_lab.study.results import setting_keys

    params = [p for p in setting_keys(session.plan) if p != "strategy.kind"]
    table = Table(title=f"Pareto front ({len(front)} configurations)")
    for name in ("trial", "config", "strategy", *params):
        table.add_column(name)
    objectives = session.plan.spec.objectives
    for o in objectives:
        table.add_column(f"{header(o.metric)}, {short(o.direction)}", justify="right")

    def shown(row: Any, metric: str) -> str:
        return cell(metric, row[metric], row.get(f"{metric} lo"), row.get(f"{metric} hi"), row["n"])

    for _, row in front.iterrows():
        table.add_row(
            str(row["trial"]),
            str(row["config_id"]),
            str(row["strategy"]),
            *[_cell(row.get(p)) for p in params],
            *[shown(row, o.metric) for o in objectives],
        )
    return table


def failures_table(failures: list[dict[str, Any]]) -> Any:
    """The failed trials: why each failed and which trial retried it."""
    from rich.table import Table

    table = Table(title=f"failed trials ({len(failures)})")
    table.add_column("trial", justify="right")
    table.add_column("retried by", justify="right")
    table.add_column("reason", overflow="fold")
    for row in failures:
        retry = row["retried_by"]
        table.add_row(str(row["trial"]), "-" if retry is None else str(retry), row["fail_reason"])
    return table


def trials_bar(console: Any, show: bool) -> Any:
    """The study's progress display: one bar over trials (and one per phase of a local trial)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show,
    )


def report(session: Session, console: Any) -> None:
    """The summary table per configuration, then the front with its hypervolume."""

    from jepa_lab.study import results as sr

    found = sr.tables(session)
    out = stdout_console()
    out.print(summary_table(found.summary, session))
    out.print(front_table(found.front, session))
    out.print(volume_line(session, found.hypervolume, found.hypervolume_ci), highlight=False)
    counts = sr.counts(session)
    out.print(
        "trials: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False
    )
    warn_precisions(session)


def warn_precisions(session: Session) -> None:
    """On stderr, once per command: the study's trials trained at different precisions."""
    import sys

    from jepa_lab.study import results as sr

    warning = sr.precision_warning(session)
    if warning:
        print(warning, file=sys.stderr)


def stdout_console() -> Any:
    """stdout; tables are not squeezed to 80 columns when it is a file or a pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=240)


def volume_line(
    session: Session, volume: float, ci: tuple[float, float] = (math.nan, math.nan)
) -> str:
    """The hypervolume, its bootstrap interval over seeds, and the reference point."""
    objectives = session.plan.spec.objectives
    interval = (
        f" [95 % CI {ci[0]:.6g} to {ci[1]:.6g}, seeds resampled]" if math.isfinite(ci[0]) else ""
    )
    return (
        f"hypervolume {volume:.6g}{interval}  (reference point "
        f"{', '.join(f'{o.metric}={o.reference:g}' for o in objectives)})"
    )
