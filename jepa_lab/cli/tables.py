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


def summary_table(summary: Any, session: Session) -> Any:
    """Per configuration: probe accuracy mean ± std (n), kNN, the random-init and raw-pixel
    baselines, RankMe, per-dim std, positional share, prediction loss, Welch p-values."""
    from rich.table import Table

    from jepa_lab.study.results import setting_keys

    params = [
        p
        for p in setting_keys(session.plan)
        if p != "strategy.kind" and p in summary and summary[p].nunique() > 1
    ]
    table = Table(title=f"study {session.plan.name}: {len(summary)} configurations")
    columns = [
        ("strategy", None, False),
        *[(p, None, False) for p in params],
        ("probe", "eval/probe_acc", True),
        ("kNN", "eval/knn_acc", True),
        ("random init", "eval/random_probe_acc", True),
        ("raw pixels", "eval/pixel_probe_acc", True),
        ("RankMe", "diag/rankme", False),
        ("per-dim std", "diag/std", False),
        ("pos. share", "diag/positional_share", False),
        ("pred. loss", "diag/pred_loss", False),
    ]
    tests = [c for c in summary.columns if c.startswith("p_vs_")]
    for name, _, _ in columns:
        table.add_column(name, justify="left" if name == "strategy" or name in params else "right")
    for name in tests:
        table.add_column(name.replace("p_vs_", "p vs "), justify="right")
    for _, row in summary.iterrows():
        cells = []
        for name, metric, pct in columns:
            if metric is None:
                cells.append(_cell(row.get(name)))
            else:
                cells.append(_fmt(row.get(metric), row.get(f"{metric} std"), int(row["n"]), pct))
        cells += [_fmt(row.get(name)) for name in tests]
        table.add_row(*cells)
    return table


def front_table(front: Any, session: Session) -> Any:
    from rich.table import Table

    from jepa_lab.study.export import short
    from jepa_lab.study.results import setting_keys

    params = [p for p in setting_keys(session.plan) if p != "strategy.kind"]
    table = Table(title=f"Pareto front ({len(front)} configurations)")
    for name in ("trial", "config", "strategy", *params):
        table.add_column(name)
    objectives = session.plan.spec.objectives
    for o in objectives:
        table.add_column(f"{o.metric} ({short(o.direction)})", justify="right")
    for _, row in front.iterrows():
        table.add_row(
            str(row["trial"]),
            str(row["config_id"]),
            str(row["strategy"]),
            *[_cell(row.get(p)) for p in params],
            *[_fmt(row[o.metric], row.get(f"{o.metric} std"), int(row["n"])) for o in objectives],
        )
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

    _, summary, front, volume = sr.tables(session)
    out = stdout_console()
    out.print(summary_table(summary, session))
    out.print(front_table(front, session))
    out.print(volume_line(session, volume), highlight=False)
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


def volume_line(session: Session, volume: float) -> str:
    """The hypervolume and the reference point it was taken against."""
    objectives = session.plan.spec.objectives
    return (
        f"hypervolume {volume:.6g}  (reference point "
        f"{', '.join(f'{o.metric}={o.reference:g}' for o in objectives)})"
    )
