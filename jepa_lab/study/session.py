"""An open study: what every part of the study layer passes around (:class:`Session`).

Opened by :func:`jepa_lab.study.runner.open_session`; it sits in its own module so the runner,
a trial and the study's MLflow runs all depend on it without depending on each other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from jepa_lab.spec.plan import StudyPlan
from jepa_lab.study.storage import Storage, claim_lock


@dataclass
class Session:
    """An open study: its plan, Optuna storage and study, and MLflow experiment and parent run."""

    plan: StudyPlan
    storage: Storage
    uri: str
    experiment_id: str = ""
    parent_run_id: str = ""
    read_only: bool = False  # status, export, plot: nothing is written, locked or created
    study: optuna.Study = field(init=False)
    optuna_storage: BaseStorage = field(init=False)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        if self.read_only:  # a reader decides nothing: no claim lock (no lock file either)
            return contextlib.nullcontext()
        return claim_lock(self.storage, self.plan.name)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def trial_id(self, number: int) -> int:
        study_id = self.optuna_storage.get_study_id_from_name(self.plan.name)
        return self.optuna_storage.get_trial_id_from_study_id_trial_number(study_id, number)
