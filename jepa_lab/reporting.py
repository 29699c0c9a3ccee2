"""Terminal progress for training and evaluation (rich), fed by the core's log/progress calls."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

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


class ProgressReporter:
    """One bar per phase ("train", "evaluate"); the train bar shows loss and images/s."""

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
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total, info="")
        self.bar.update(self.tasks[phase], completed=done, total=total, info=self.info)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if "train/loss" in metrics:
            self.info = (
                f"loss {metrics['train/loss']:.4f}  {metrics['train/images_per_second']:.0f} img/s"
            )
