"""Paired comparisons on the same items: the exact McNemar test, in one place for every caller
(INT8 against fp32 on the same test images, planners on the same episodes, a study's pooled
comparisons)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def discordant(right_a: ArrayLike, right_b: ArrayLike) -> tuple[int, int]:
    """(a right and b wrong, a wrong and b right) counts of two paired (N,) boolean results."""
    a, b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results of different shapes: {a.shape} and {b.shape}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact McNemar p-value (statsmodels' ``mcnemar(exact=True)``: a two-sided binomial test)
    from the :func:`discordant` counts; 1.0 without a discordant pair."""
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar([[0, only_a], [only_b, 0]], exact=True).pvalue)


def mcnemar_exact(right_a: ArrayLike, right_b: ArrayLike) -> float:
    """Exact McNemar p-value of two paired (N,) boolean results; 1.0 without a discordant pair."""
    return mcnemar_p(*discordant(right_a, right_b))
