"""Training on the terminal (rich): progress of training and evaluation, fed by the core's
log/progress calls, and the summary table of a result."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from jepa_lab.training.result import TrainResult


class ProgressReporter:
    """One bar per phase ("train", "eval features", "eval probe", ..., "logging"); the train
    bar shows loss and images/s."""

    def __init__(self, enabled: bool = True) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}
        self.info = ""

    def __enter__(self) -> ProgressReporter:
        self.bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.bar.stop()

    def progress(self, phase: str, done: int, total: int) -> None:
        """One bar per phase; only the train bar shows the loss and throughput (an evaluation
        phase would show stale training numbers)."""
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total, info="")
        info = self.info if phase == "train" else ""
        self.bar.update(self.tasks[phase], completed=done, total=total, info=info)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if "train/loss" in metrics:
            self.info = (
                f"loss {metrics['train/loss']:.4f}  {metrics['train/images_per_second']:.0f} img/s"
            )


def summary_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """Human-readable rows of the key metrics of one run."""

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.2f} %" if key in metrics else "-"

    def num(key: str, fmt: str = ".4g") -> str:
        return format(metrics[key], fmt) if key in metrics else "-"

    if "drift/nmse_k1/none" in metrics:
        return world_rows(metrics)

    def val(key: str) -> str:
        ci = metrics.get(f"{key}_ci")
        return pct(key) if ci is None else f"{pct(key)} +- {100 * ci:.2f}"

    def tokens() -> str:
        return f"{num('diag/context_tokens', '.1f')} / {num('diag/target_tokens', '.1f')}"

    rows = [
        ("linear probe (test)", pct("eval/probe_acc")),
        ("linear probe (validation)", val("eval/probe_val_acc")),
        ("kNN (test)", pct("eval/knn_acc")),
        ("random-init probe", pct("eval/random_probe_acc")),
        ("raw-pixel probe", pct("eval/pixel_probe_acc")),
        ("gain over random init", pct("eval/gain_over_random")),
        ("RankMe", num("diag/rankme")),
        ("per-dim std", num("diag/std")),
        ("SIGReg statistic (pooled features)", num("diag/sigreg_pooled")),
        ("SIGReg statistic (what SIGReg regularises)", num("diag/sigreg_regularised")),
        ("prediction error (MSE to LayerNorm'd targets)", num("diag/pred_loss")),
        ("own training loss (held-out images)", num("diag/train_loss_heldout")),
        ("context / target tokens per image", tokens()),
        ("positional share", num("diag/positional_share", ".3f")),
    ]
    if "eval/gain_over_random" in metrics and metrics["eval/gain_over_random"] <= 0:
        rows.append(("verdict", "NOT better than its random-init baseline"))
    return rows


def world_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """Key metrics of a world-model run: drift, diagnostics and planning success."""

    def num(key: str, fmt: str = ".3g") -> str:
        return format(metrics[key], fmt) if key in metrics else "-"

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.2f} %" if key in metrics else "-"

    rows = [(
        "door crossings in data (transitions / walks)",
        f"{pct('data/crossing_share')} / {pct('data/crossing_trajectory_share')}",
    )]  # fmt: skip
    for kind in ("none", "renorm", "knn"):
        steps = [k for k in (1, 10, 20, 30) if f"drift/nmse_k{k}/{kind}" in metrics]
        shown = "  ".join(f"k{k} {num(f'drift/nmse_k{k}/{kind}')}" for k in steps)
        rows.append((f"NMSE ({kind})", shown))
    rows += [
        ("NMSE references (copy / mean / random)", " / ".join(
            num(f"drift/ref/nmse_{r}_final") for r in ("copy", "mean", "random"))),
        ("RankMe", num("diag/rankme")),
        ("per-dim std", num("diag/std")),
        ("SIGReg statistic", num("diag/sigreg")),
        ("total variance", num("diag/total_variance")),
    ]  # fmt: skip
    for key in sorted(k for k in metrics if k.startswith("plan/test/") and k.endswith("/success")):
        arm = key.removeprefix("plan/test/").removesuffix("/success")
        low, high = metrics[key[: -len("success")] + "success_low"], metrics[
            key[: -len("success")] + "success_high"]  # fmt: skip
        seconds = metrics[key[: -len("success")] + "seconds_per_episode"]
        rows.append((f"success {arm}", f"{100 * metrics[key]:.1f} % [{100 * low:.0f}, "
                     f"{100 * high:.0f}]  {seconds:.2f} s/ep"))  # fmt: skip
    return rows


def print_summary(result: TrainResult, stderr: bool = False) -> None:
    table = Table(
        title=f"{result.spec.name} ({result.spec.strategy.kind}, seed {result.spec.seed})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(result.metrics):
        table.add_row(name, value)
    table.add_row("steps", str(result.steps))
    table.add_row("training time", f"{result.train_seconds:.1f} s")
    table.add_row("throughput", f"{result.images_per_second:.0f} img/s")
    facts = result.provenance
    table.add_row("device, precision", f"{facts.get('device')}, {facts.get('precision', 'fp32')}")
    Console(stderr=stderr).print(table)
