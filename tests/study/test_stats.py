"""The statistics of comparisons against direct scipy/statsmodels calls on fixed data, and the
front's uncertainty at its limits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from jepa_lab.spec.study import ObjectiveSpec
from jepa_lab.study import export, pareto, stats

A = [0.712, 0.705, 0.731, 0.719]
B = [0.690, 0.701, 0.702, 0.688]


def test_mean_ci_is_scipys_t_interval() -> None:
    got = stats.mean_ci(A)
    low, high = sp.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sp.sem(A))
    assert (got.estimate, got.low, got.high, got.n) == pytest.approx((np.mean(A), low, high, 4))
    assert math.isnan(stats.mean_ci([0.7]).low)
    assert stats.mean_ci([0.7, 0.7]).low == 0.7  # no spread: the point, not NaN or inf


def test_paired_t_is_scipys_ttest_rel() -> None:
    got = stats.paired_t(A, B)
    result = sp.ttest_rel(A, B)
    ci = result.confidence_interval(0.95)
    assert got.diff == pytest.approx(np.mean(np.subtract(A, B)))
    assert (got.low, got.high, got.p) == pytest.approx((ci.low, ci.high, result.pvalue))
    assert got.test == "paired t, n = 4"


def test_two_seeds_give_an_interval_but_no_test() -> None:
    got = stats.paired_t(A[:2], B[:2])
    assert got.test == "n = 2: no test" and math.isnan(got.p)
    ci = sp.ttest_rel(A[:2], B[:2]).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high))


def test_zero_spread_gives_no_p_value() -> None:
    got = stats.paired_t([0.76, 0.78, 0.77], [0.70, 0.72, 0.71])  # +0.06 up to rounding
    assert math.isnan(got.p) and "zero spread: no test" in got.test
    assert got.low == got.high == pytest.approx(0.06)


def test_mcnemar_exact_on_constructed_predictions() -> None:
    # b = 0 (a right, b wrong), c = 10 (a wrong, b right), 90 concordant: p = 2 * 0.5**10
    a = np.r_[np.ones(80, bool), np.zeros(10, bool), np.zeros(10, bool)]
    b = np.r_[np.ones(80, bool), np.ones(10, bool), np.zeros(10, bool)]
    p, test = stats.mcnemar_exact(a, b)
    assert p == pytest.approx(2 * 0.5**10) and "10 discordant" in test
    assert math.isnan(stats.mcnemar_exact(a, a)[0])  # nothing discordant: no test, not p = 1 or 0
    one = stats.compare([a.mean()], [b.mean()], a[None], b[None])
    assert one.p == pytest.approx(2 * 0.5**10) and one.test.startswith("n = 1: McNemar")
    assert one.image_low < one.diff < one.image_high


def test_image_bootstrap_is_scipys_percentile_bootstrap_pooled_over_seeds() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 500)) < 0.8, rng.random((2, 500)) < 0.7
    per_image = (a.astype(float) - b.astype(float)).mean(0)
    direct = sp.bootstrap(
        (per_image,), np.mean, n_resamples=2000, method="percentile", vectorized=True,
        batch=100, rng=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    assert stats.image_bootstrap(a, b) == pytest.approx((direct.low, direct.high))


def test_holm_is_statsmodels_and_keeps_nan() -> None:
    p = [0.01, 0.04, math.nan, 0.03, 0.2]
    got = stats.holm(p)
    expected = multipletests([0.01, 0.04, 0.03, 0.2], method="holm")[1]
    assert list(got[[0, 1, 3, 4]]) == pytest.approx(list(expected)) and math.isnan(got[2])


def test_wilson_ci_is_statsmodels() -> None:
    got = stats.wilson_ci(0.85, 1000)
    assert (got.low, got.high) == pytest.approx(proportion_confint(850, 1000, method="wilson"))


MAX_MIN = [
    ObjectiveSpec(metric="eval/probe_acc", direction="maximize", reference=0.0),
    ObjectiveSpec(metric="diag/pred_loss", direction="minimize", reference=2.0),
]


def toy(values: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """Trials of configurations with known per-seed (probe_acc, pred_loss)."""
    out, number = [], 0
    for config, points in values.items():
        for seed, (acc, loss) in enumerate(points):
            out.append({
                "trial": number, "state": "COMPLETE", "config_id": config, "seed": seed,
                "strategy": "ema", "mlflow_run_id": f"r{number}", "settings": {},
                "metrics": {"eval/probe_acc": acc, "diag/pred_loss": loss},
            })  # fmt: skip
            number += 1
    return export.trials_frame(out)


def test_front_probability_is_one_for_a_wide_margin_and_below_one_for_a_near_tie() -> None:
    trials = toy({
        "best": [(0.90, 0.10), (0.91, 0.11), (0.89, 0.09)],  # dominates everything by far
        "far": [(0.50, 0.90), (0.52, 0.95), (0.48, 0.85)],
        "tie": [(0.60, 0.60), (0.50, 0.70), (0.70, 0.50)],  # noisy, beside "near"
        "near": [(0.60, 0.60), (0.60, 0.60), (0.60, 0.60)],
    })  # fmt: skip
    found = pareto.bootstrap(trials, MAX_MIN, resamples=300)
    assert found.front_prob["best"] == 1.0 and found.front_prob["far"] == 0.0
    table = export.aggregate(trials, MAX_MIN, [])
    front = export.front(table, MAX_MIN)
    assert list(front["config_id"]) == ["best"]
    # Without "best", "near" and "tie" have equal means: both on the front, neither surely.
    without = trials[trials["config_id"] != "best"]
    unsure = pareto.bootstrap(without, MAX_MIN, resamples=300).front_prob
    assert 0 < unsure["tie"] < 1 and 0 < unsure["near"] < 1
    assert found.hypervolume_low <= export.front_hypervolume(front, MAX_MIN)
    assert export.front_hypervolume(front, MAX_MIN) <= found.hypervolume_high


def test_front_and_hypervolume_of_the_means_match_brute_force() -> None:
    from tests.study.test_export import brute_front, grid_area

    rng = np.random.default_rng(3)
    values = {
        f"c{i}": [(float(a), float(b)) for a, b in rng.uniform(0, 1, size=(3, 2))]
        for i in range(12)
    }
    trials = toy(values)
    table = export.aggregate(trials, MAX_MIN, [])
    means = np.array([np.mean(v, axis=0) for v in values.values()])
    expected = {f"c{i}" for i in brute_front(means, ["maximize", "minimize"])}
    front = export.front(table, MAX_MIN)
    assert set(front["config_id"]) == expected
    flipped = np.c_[-means[:, 0], means[:, 1]]  # minimise both: -acc against reference 0
    exact = grid_area(flipped, np.array([0.0, 2.0]))
    assert export.front_hypervolume(front, MAX_MIN) == pytest.approx(exact, rel=1e-12)
    history = pareto.hypervolume_history(trials, MAX_MIN)
    assert [t for t, _ in history] == list(range(36))
    assert history[-1][1] == pytest.approx(exact, rel=1e-12)
    first = np.array([[-values["c0"][0][0], values["c0"][0][1]]])
    assert history[0][1] == pytest.approx(grid_area(first, np.array([0.0, 2.0])))


def test_the_table_says_n_2_no_test_for_two_seeds() -> None:
    from tests.study.test_export import MIN_MIN, rows

    two = [r for r in rows() if r.get("seed") in (0, 1) and r["trial"] < 6]
    table = export.aggregate(export.trials_frame(two), MIN_MIN, ["strategy.kind"])
    assert list(table["test_vs_random"]) == ["n = 2: no test"] * 2
    assert table["p_vs_random"].isna().all() and table["d_vs_random lo"].notna().all()
    out = export.export_table(table, MIN_MIN, ["strategy.kind"])
    assert "n = 2: no test" in export.render(out, "md", {"study": "s"})  # type: ignore[operator]
