"""Collapse diagnostics at their limits: collapsed vs isotropic Gaussian, position-only vs iid."""

from __future__ import annotations

import math

import pytest
import torch

from jepa_lab.eval.diagnostics import mean_std, positional_share, rankme, sigreg_statistic

N, D = 4096, 32


def _gaussian(n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _collapsed(n: int = N, d: int = D, seed: int = 0) -> torch.Tensor:
    """Every row the same random vector, plus 1e-3 noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=generator) + 1e-3 * torch.randn(n, d, generator=generator)


def test_rankme_separates_collapse_from_gaussian() -> None:
    assert rankme(_collapsed()) < 1.2
    assert rankme(_gaussian()) > 0.95 * D


def test_rankme_counts_the_rank() -> None:
    generator = torch.Generator().manual_seed(1)
    # Rank 4 with equal singular values: an orthonormal basis of 4 columns, scaled.
    q, _ = torch.linalg.qr(torch.randn(N, 4, generator=generator, dtype=torch.float64))
    basis, _ = torch.linalg.qr(torch.randn(D, 4, generator=generator, dtype=torch.float64))
    assert rankme(q @ basis.T) == pytest.approx(4.0, rel=1e-4)


def test_rankme_of_zero_is_nan() -> None:
    assert math.isnan(rankme(torch.zeros(8, 4)))


def test_mean_std_separates_collapse_from_gaussian() -> None:
    # sqrt(1e-6 + 1e-4): VICReg's epsilon inside the root keeps collapse at ~0.01, not 0.
    assert mean_std(_collapsed()) == pytest.approx(math.sqrt(1e-6 + 1e-4), rel=0.02)
    assert mean_std(_gaussian()) == pytest.approx(1.0, abs=0.03)


def test_sigreg_statistic_gaussian_is_small_collapse_large() -> None:
    # 4 chunks of 1024 rows; the Gaussian reference is ~1.05 with a chunk-to-chunk spread ~0.1.
    assert 0.8 < sigreg_statistic(_gaussian()) < 1.4
    assert sigreg_statistic(_collapsed()) > 0.4 * 1024


def test_sigreg_statistic_scale_is_the_chunk_size() -> None:
    # The all-zero embedding is the collapse minimum, 0.402 * n, whatever the number of rows.
    assert sigreg_statistic(torch.zeros(N, D)) == pytest.approx(0.402 * 1024, rel=1e-3)
    assert sigreg_statistic(torch.zeros(3000, D)) == pytest.approx(0.402 * 1024, rel=1e-3)
    assert sigreg_statistic(torch.zeros(N, D), chunk=256) == pytest.approx(0.402 * 256, rel=1e-3)
    assert sigreg_statistic(torch.zeros(100, D)) == pytest.approx(0.402 * 100, rel=1e-3)


def test_sigreg_statistic_is_deterministic() -> None:
    z = _gaussian(2048)
    assert sigreg_statistic(z) == sigreg_statistic(z.clone())
    assert sigreg_statistic(z, directions_seed=1) != sigreg_statistic(z)


def _positions(n_pos: int, dim: int, scale: float, seed: int) -> torch.Tensor:
    """(N, D) per-position vectors, centred, with mean squared norm exactly dim * scale^2."""
    pos = torch.randn(
        n_pos, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    pos = pos - pos.mean(0)
    return pos * (scale * math.sqrt(dim) / pos.square().sum(1).mean().sqrt())


def test_positional_share_position_only_is_one() -> None:
    tokens = _positions(16, 8, 1.0, seed=0).expand(64, 16, 8)
    assert positional_share(tokens) == pytest.approx(1.0, abs=1e-12)


def test_positional_share_iid_is_near_zero() -> None:
    tokens = torch.randn(256, 16, 8, generator=torch.Generator().manual_seed(0))
    # Expectation under independence is (N - 1) / (B N - 1) = 15 / 4095 ~ 0.004.
    assert positional_share(tokens) < 0.05


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_positional_share_mixed_matches_variance_ratio(scale: float) -> None:
    # Position part with per-dim variance scale^2 plus unit iid noise: share ~ s^2 / (s^2 + 1).
    noise = torch.randn(256, 16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = _positions(16, 8, scale, seed=2) + noise
    expected = scale**2 / (scale**2 + 1)
    assert positional_share(tokens) == pytest.approx(expected, abs=0.03)


def test_positional_share_constant_is_nan() -> None:
    assert math.isnan(positional_share(torch.ones(4, 16, 8)))


def test_diagnostics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError):
        positional_share(torch.randn(1, 16, 8))
    with pytest.raises(ValueError):
        rankme(torch.randn(4, 4, 4))
