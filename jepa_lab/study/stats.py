"""Statistics of a study's comparisons: intervals over seeds and images, paired tests, Holm.

Pure functions of plain arrays, through scipy and statsmodels (no hand-written test statistics).
Runs of one configuration pair with runs of another by seed (same batches, masks, init and probe
images), so comparisons are paired: the mean per-seed difference with a t-interval; a bootstrap
over test images for the test-sampling noise; McNemar's exact test on one seed's per-image
predictions. Where n cannot carry a test, the result says so in words (``"n = 2: no test"``)
and its p-value is NaN; a degenerate sample (no spread, no discordant image) never yields p = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jepa_lab.eval import paired

LEVEL = 0.95  # every interval's confidence level
MIN_PAIRED = 3  # paired seeds a t-test needs before its p-value is reported
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # intervals are reproducible


@dataclass(frozen=True)
class Interval:
    """An estimate with its ``LEVEL`` interval (NaN bounds where n cannot give one)."""

    estimate: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """A paired comparison a - b: over seeds, over test images, and its test."""

    diff: float  # mean over seeds of the per-seed difference
    low: float  # t-interval over the per-seed differences (NaN for n < 2)
    high: float
    image_low: float  # bootstrap over test images, pooled over seeds (NaN without predictions)
    image_high: float
    n: int  # paired seeds
    p: float  # raw two-sided p-value; NaN where there is no test
    test: str  # the test behind p, or why there is none ("n = 2: no test")


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval of ``values`` (non-finite ones dropped); NaN bounds for n < 2.

    With zero spread the interval is the point itself: the sample gives no width to report.
    """
    from scipy import stats

    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    if _no_spread(x):
        return Interval(mean, mean, mean, n)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    return Interval(mean, float(low), float(high), n)


def _no_spread(x: np.ndarray) -> bool:
    """Equal up to float rounding (0.76 - 0.70 and 0.78 - 0.72 differ in the last bit): a
    t statistic over such a sample is rounding noise, not evidence."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def wilson_ci(accuracy: float, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of an accuracy measured on ``n`` images (one run's binomial CI)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0 or not math.isfinite(accuracy):
        return Interval(accuracy, math.nan, math.nan, max(n, 0))
    low, high = proportion_confint(round(accuracy * n), n, alpha=1 - level, method="wilson")
    return Interval(accuracy, float(low), float(high), n)


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison:
    """Paired t on per-seed values a[i], b[i] (same seed i): mean difference, t-interval, p.

    The interval is reported from n = 2 (wide, but honest); the p-value from ``MIN_PAIRED``
    seeds, below which ``test`` reads e.g. ``"n = 2: no test"``. Identical differences on every
    seed (zero spread) have no t statistic: ``"zero spread: no test"``.
    """
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {len(x)} and {len(y)}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    d = x - y
    n = len(d)
    nan = math.nan
    if n == 0:
        return Comparison(nan, nan, nan, nan, nan, 0, nan, "n = 0: no test")
    diff = float(d.mean())
    if n >= 2 and _no_spread(d):
        return Comparison(diff, diff, diff, nan, nan, n, nan, f"n = {n}, zero spread: no test")
    if n < 2:
        return Comparison(diff, nan, nan, nan, nan, n, nan, f"n = {n}: no test")
    result = stats.ttest_rel(x, y)
    ci = result.confidence_interval(level)
    low, high = float(ci.low), float(ci.high)
    if n < MIN_PAIRED:
        return Comparison(diff, low, high, nan, nan, n, nan, f"n = {n}: no test")
    return Comparison(diff, low, high, nan, nan, n, float(result.pvalue), f"paired t, n = {n}")


def mcnemar_exact(
    correct_a: np.ndarray, correct_b: np.ndarray, unit: str = "image"
) -> tuple[float, str]:
    """Exact McNemar p-value of two classifiers scored on the same images (M,) booleans (or of
    two planners on the same episodes: ``unit`` names what is paired, in the reason).

    Only the discordant images count: b (a right, b wrong) and c (a wrong, b right), with
    p = two-sided binomial(b; b + c, 1/2). No discordant image: no test (NaN).
    """
    only_a, only_b = paired.discordant(correct_a, correct_b)
    if only_a + only_b == 0:
        return math.nan, f"no discordant {unit}: no test"
    return paired.mcnemar_p(only_a, only_b), f"McNemar exact, {only_a + only_b} discordant"


def image_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy difference a - b over test images.

    correct_a, correct_b (S, M) booleans: seed s's encoder right on image m. Every seed is
    scored on the same M images, so a resample draws M image indices once and applies them to
    every seed: the statistic is the mean over seeds of the accuracy difference, i.e. the mean of
    the per-image difference averaged over seeds. Captures test-sampling noise only.
    """
    from scipy import stats

    a, b = np.atleast_2d(np.asarray(correct_a, bool)), np.atleast_2d(np.asarray(correct_b, bool))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"predictions of different images: {a.shape} and {b.shape}")
    per_image = (a.astype(float) - b.astype(float)).mean(0)  # (M,)
    if np.ptp(per_image) == 0:  # every resample gives the same value
        return float(per_image[0]), float(per_image[0])
    result = stats.bootstrap(
        (per_image,),
        np.mean,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        batch=100,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(
    a: Sequence[float],
    b: Sequence[float],
    correct_a: np.ndarray | None = None,
    correct_b: np.ndarray | None = None,
) -> Comparison:
    """Paired comparison a - b over seeds, with the image bootstrap and (one seed) McNemar.

    a, b (S,) per-seed accuracies, paired by position; correct_a, correct_b (S, M) per-image
    correctness of the same runs, or None where the runs kept no predictions.
    """
    result = paired_t(a, b)
    if correct_a is None or correct_b is None:
        return result
    low, high = image_bootstrap(correct_a, correct_b)
    p, test = result.p, result.test
    if result.n == 1:
        p, test = mcnemar_exact(np.ravel(correct_a), np.ravel(correct_b))
        test = f"n = 1: {test}"
    return Comparison(result.diff, result.low, result.high, low, high, result.n, p, test)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values over the finite entries of ``pvalues`` (the family); NaN stays."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out


def percentile_interval(
    values: Sequence[float] | np.ndarray, level: float = LEVEL
) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (NaN when there are none)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    return float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))
