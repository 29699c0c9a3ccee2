"""The one exact McNemar test of every paired comparison (INT8 against fp32, planners, studies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from jepa_lab.eval import paired


def test_mcnemar_is_the_binomial_test_of_the_discordant_pairs() -> None:
    a = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 0, 1] * 3, dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 1, 1, 0, 0, 1, 1, 1] * 3, dtype=torch.bool)
    assert paired.discordant(a, b) == (6, 6)
    assert paired.mcnemar_exact(a, b) == pytest.approx(1.0)
    c = np.array([True] * 9 + [False] * 21)
    d = np.array([False] * 30)
    assert paired.discordant(c, d) == (9, 0)
    assert paired.mcnemar_exact(c, d) == pytest.approx(binomtest(0, 9, 0.5).pvalue)
    assert paired.mcnemar_exact(c, d) < 0.01


def test_no_discordant_pair_is_p_one_and_unpaired_shapes_are_refused() -> None:
    a = torch.tensor([True, False, True])
    assert paired.mcnemar_exact(a, a) == 1.0
    with pytest.raises(ValueError, match="different shapes"):
        paired.discordant(a, torch.tensor([True, False]))
