"""The Pareto front with its uncertainty: how sure each configuration's place on it is, the
hypervolume's bootstrap interval, and the hypervolume's history over trials.

The front itself is taken on the configurations' means (:func:`jepa_lab.study.export.front`).
Its uncertainty comes from the seeds: a bootstrap resamples every configuration's seeds with
replacement (a configuration with one seed always gives the same point), recomputes the means,
the non-dominated set and its hypervolume. A configuration's ``front_prob`` is the share of
resamples in which it stays on the front. Pure functions of the trial rows (no Optuna).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study import export, stats

RESAMPLES = 1000
SEED = 0
UNCERTAIN = 0.9  # front members below this probability are marked as uncertain


@dataclass(frozen=True)
class Uncertainty:
    """The bootstrap's summary: per configuration and for the hypervolume."""

    front_prob: dict[str, float] = field(default_factory=dict)  # config_id -> probability
    hypervolume_low: float = math.nan
    hypervolume_high: float = math.nan
    resamples: int = 0


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """COMPLETE trials in trial order, each configuration's seed counted once (its first)."""
    if trials.empty or "state" not in trials:
        return trials.iloc[0:0]
    done = trials[trials["state"] == "COMPLETE"].sort_values("trial")
    return done.drop_duplicates(["config_id", "seed"], keep="first")


def _points(done: pd.DataFrame, objectives: Sequence[ObjectiveSpec]) -> dict[str, np.ndarray]:
    """config_id -> (S, K) objective values of its seeds (rows with a missing value dropped)."""
    columns = [o.metric for o in objectives]
    if any(c not in done for c in columns):
        return {}
    out = {}
    for config, group in done.groupby("config_id", sort=False):
        values = group[columns].to_numpy(float)
        values = values[np.all(np.isfinite(values), axis=1)]
        if len(values):
            out[str(config)] = values
    return out


def bootstrap(
    trials: pd.DataFrame,
    objectives: Sequence[ObjectiveSpec],
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Uncertainty:
    """Front membership probabilities and the hypervolume's percentile interval, by resampling
    each configuration's seeds with replacement ``resamples`` times."""
    points = _points(completed(trials), objectives)
    if not points:
        return Uncertainty()
    directions = [o.direction for o in objectives]
    reference = [o.reference for o in objectives]
    configs = list(points)
    rng = np.random.default_rng(seed)
    stays = np.zeros(len(configs))
    volumes = np.empty(resamples)
    for r in range(resamples):
        means = np.stack(
            [v[rng.integers(0, len(v), len(v))].mean(0) for v in points.values()]
        )  # (C, K)
        stays += export.nondominated(means, directions)
        volumes[r] = export.hypervolume(means, reference, directions)
    low, high = stats.percentile_interval(volumes)
    return Uncertainty(
        front_prob={c: float(s / resamples) for c, s in zip(configs, stays, strict=True)},
        hypervolume_low=low,
        hypervolume_high=high,
        resamples=resamples,
    )


def hypervolume_history(
    trials: pd.DataFrame, objectives: Sequence[ObjectiveSpec]
) -> list[tuple[int, float]]:
    """(trial number, hypervolume) after each completed trial, in trial order: the front of the
    configurations' means over the trials completed so far, against the study's reference."""
    done = completed(trials)
    columns = [o.metric for o in objectives]
    if done.empty or any(c not in done for c in columns):
        return []
    directions = [o.direction for o in objectives]
    reference = [o.reference for o in objectives]
    history = []
    for k in range(1, len(done) + 1):
        seen = done.iloc[:k]
        means = seen.groupby("config_id", sort=False)[columns].mean().dropna()
        volume = export.hypervolume(means.to_numpy(float), reference, directions)
        history.append((int(seen["trial"].iloc[-1]), volume))
    return history


def with_probabilities(table: pd.DataFrame, uncertainty: Uncertainty) -> pd.DataFrame:
    """``table`` (one row per configuration) with its ``front_prob`` column."""
    out = table.copy()
    if not out.empty:
        out["front_prob"] = [uncertainty.front_prob.get(str(c), math.nan) for c in out["config_id"]]
    return out
