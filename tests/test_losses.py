"""SIGReg's statistic and the strategies' limits."""

from __future__ import annotations

import pytest
import torch

from jepa_lab.core.models import build_model
from jepa_lab.core.strategies.ema import EmaStrategy, ema_update, momentum_at
from jepa_lab.core.strategies.sigreg import SigregStrategy, sigreg, sigreg_directions
from jepa_lab.spec.experiment import EmaSpec, ModelSpec, SigregSpec

DIRECTIONS = sigreg_directions(32, 512, step=0)


@pytest.mark.parametrize("n", [256, 2048])
def test_sigreg_of_a_gaussian_is_about_one_at_any_n(n: int) -> None:
    """The statistic is itself random: average it over independent draws."""
    generator = torch.Generator().manual_seed(n)
    values = [float(sigreg(torch.randn(n, 32, generator=generator), DIRECTIONS)) for _ in range(8)]
    assert 0.85 < sum(values) / len(values) < 1.25


@pytest.mark.parametrize("n", [64, 1000])
def test_sigreg_of_collapsed_embeddings_is_0402_n(n: int) -> None:
    assert float(sigreg(torch.zeros(n, 32), DIRECTIONS)) == pytest.approx(0.402 * n, rel=1e-3)


def test_sigreg_grows_for_shifted_or_scaled_embeddings() -> None:
    z = torch.randn(1024, 32, generator=torch.Generator().manual_seed(0))
    gaussian = float(sigreg(z, DIRECTIONS))
    assert float(sigreg(z + 2.0, DIRECTIONS)) > 20 * gaussian
    assert float(sigreg(z * 4.0, DIRECTIONS)) > 20 * gaussian
    assert float(sigreg(z * 0.1, DIRECTIONS)) > 20 * gaussian


def test_sigreg_is_fp32_under_autocast() -> None:
    z = torch.randn(256, 32, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sigreg(z, DIRECTIONS)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_directions_are_unit_and_a_function_of_the_step() -> None:
    assert torch.allclose(DIRECTIONS.norm(dim=0), torch.ones(512))
    assert torch.equal(sigreg_directions(32, 8, 5), sigreg_directions(32, 8, 5))
    assert not torch.equal(sigreg_directions(32, 8, 5), sigreg_directions(32, 8, 6))


def test_lambda_zero_gives_the_pure_prediction_loss() -> None:
    strategy = SigregStrategy(SigregSpec(kind="sigreg", projector=None, **{"lambda": 0.0}))
    pred = torch.tensor(0.7)
    total, reg = strategy.loss(pred, torch.randn(8, 4, 16), torch.randn(8, 3, 16), step=0)
    assert float(total) == pytest.approx(0.7) and reg is not None and float(reg) > 0


def _encoder_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    spec = ModelSpec(dim=16, depth=1, heads=2, pred_dim=8, pred_depth=1, pred_heads=2)
    online = build_model(spec, 8, 1, seed=0).encoder
    target = build_model(spec, 8, 1, seed=1).encoder
    return online, target


def test_ema_momentum_zero_copies_and_one_freezes() -> None:
    online, target = _encoder_pair()
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters(), strict=True))
    ema_update(target, online, momentum=0.0)
    assert all(
        torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters(), strict=True)
    )


def test_ema_schedule_is_linear_and_target_has_no_grad() -> None:
    spec = EmaSpec(kind="ema", momentum_start=0.99, momentum_end=1.0)
    assert momentum_at(spec, 0, 100) == 0.99
    assert momentum_at(spec, 50, 100) == pytest.approx(0.995)
    assert momentum_at(spec, 100, 100) == 1.0
    online, _ = _encoder_pair()
    strategy = EmaStrategy(spec, online, total_steps=100)
    assert not any(p.requires_grad for p in strategy.target.parameters())
