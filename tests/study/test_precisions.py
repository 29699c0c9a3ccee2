"""A study whose trials trained at different precisions says so."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from jepa_lab.study import results as sr
from jepa_lab.study.tracking import A


def _session(precisions: list[str | None]) -> Any:
    study = optuna.create_study()
    for precision in precisions:
        attrs = {} if precision is None else {A + "precision": precision}
        study.add_trial(
            create_trial(
                value=0.5, params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
                user_attrs=attrs,
            )
        )  # fmt: skip
    return SimpleNamespace(study=study)


def test_one_precision_gives_no_warning() -> None:
    session = _session(["fp32", "fp32", None])
    assert sr.precisions(session) == {"fp32": [0, 1]}
    assert sr.precision_warning(session) is None


def test_mixed_precisions_are_named_with_their_trials() -> None:
    warning = sr.precision_warning(_session(["fp32", "bf16", "fp32"]))
    assert warning is not None
    assert "bf16: 1 trial (1)" in warning and "fp32: 2 trials (0, 2)" in warning
    assert "--precision" in warning
