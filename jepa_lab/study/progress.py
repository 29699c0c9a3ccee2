"""A whole study's progress and ETA, however many workers share it.

The ETA is the trials left times the mean duration of the complete trials, shared by the workers
on the study: ``remaining x mean / workers``. The workers are those known to run (``run
--workers N`` knows its N), or else inferred from the running trials (one per worker; a trial
whose worker died on this host is not counted). One place for ``status`` (text and ``--json``),
the progress lines of ``run`` and of each ``worker``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from optuna.trial import FrozenTrial, TrialState

from jepa_lab.study.runner import budget_used
from jepa_lab.study.storage import worker_alive
from jepa_lab.study.tracking import WORKER


def eta_seconds(remaining: int, mean_trial_s: float, workers: int) -> float:
    """Seconds until ``remaining`` trials of ``mean_trial_s`` each are done by ``workers``
    workers in parallel (at least one: a study nobody works on is timed as if one did)."""
    return remaining * mean_trial_s / max(1, workers)


def duration(seconds: float) -> str:
    """``2m05s``, ``1h03m``: an ETA for people."""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{rest:02d}s"


@dataclass(frozen=True)
class StudyProgress:
    """Where a study stands: trials finished of its total, trials running, the workers the ETA
    assumes, the mean duration of a complete trial and the ETA (None until a trial completed)."""

    finished: int
    total: int
    running: int
    workers: int
    mean_trial_s: float | None
    eta_s: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.finished)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self) | {"remaining": self.remaining}

    def eta(self) -> str:
        """``ETA 3m00s (6 trials x 60.0 s / 2 workers)``, or why there is none."""
        if self.remaining == 0:
            return "no trial left"
        if self.eta_s is None or self.mean_trial_s is None:
            return "ETA after the first complete trial"
        left = f"{self.remaining} trial{'s' * (self.remaining != 1)} x {self.mean_trial_s:.1f} s"
        if self.workers == 0:
            return f"ETA {duration(self.eta_s)} at 1 worker ({left}; no worker is running now)"
        plural = "s" * (self.workers != 1)
        return f"ETA {duration(self.eta_s)} ({left} / {self.workers} worker{plural})"

    def bracket(self) -> str:
        """``  [3/8 trials, ETA 2m10s (...)]``: the suffix of a progress line."""
        return f"  [{self.finished}/{self.total} trials, {self.eta()}]"


def _running(trials: list[FrozenTrial]) -> int:
    """RUNNING trials whose worker may still run (alive here, or on another host)."""
    return sum(
        1
        for t in trials
        if t.state == TrialState.RUNNING
        and (WORKER not in t.user_attrs or worker_alive(str(t.user_attrs[WORKER])) is not False)
    )


def _mean_trial_s(trials: list[FrozenTrial]) -> float | None:
    seconds = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete
    ]
    return sum(seconds) / len(seconds) if seconds else None


def study_progress(
    trials: list[FrozenTrial], total: int, workers: int = 0, joining: int = 0
) -> StudyProgress:
    """The progress of a study with these ``trials`` and ``total`` trials to run. ``workers``:
    how many its caller knows to work on it (0: inferred from the running trials); ``joining``:
    workers between two trials, about to claim the next (a worker reporting the trial it just
    finished counts itself so)."""
    running = _running(trials)
    active = max(workers, running + joining)
    finished = budget_used(trials, finished=True)
    mean = _mean_trial_s(trials)
    remaining = max(0, total - finished)
    eta = None if mean is None else eta_seconds(remaining, mean, active)
    return StudyProgress(finished, total, running, active, mean, eta)
