"""SIGReg's statistic, the strategies' limits, and every strategy of the spec union."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import pytest
import torch

from jepa_lab.core.models import build_model
from jepa_lab.core.strategies import build_training
from jepa_lab.core.strategies.ema import EmaStrategy, ema_update, momentum_at
from jepa_lab.core.strategies.sigreg import SigregStrategy, sigreg, sigreg_directions
from jepa_lab.spec.experiment import EmaSpec, ExperimentSpec, ModelSpec, SigregSpec, StrategySpec
from jepa_lab.spec.load import load
from jepa_lab.training.checkpoint import read_checkpoint
from jepa_lab.training.loop import TrainOptions, train

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


def _sigreg_direct(
    z: torch.Tensor, directions: torch.Tensor, knots: int = 17, t_max: float = 3.0
) -> torch.Tensor:
    """The statistic as it was computed before the angle-addition form: sin and cos of the
    whole (N, M, T) tensor. The reference the cheaper form must match."""
    x = z.float() @ directions.to(torch.float32)
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float32)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, dtype=torch.float32)
    weights[0] = weights[-1] = dt
    weights = weights * torch.exp(-0.5 * t.square())
    xt = x.unsqueeze(-1) * t
    err = (xt.cos().mean(0) - torch.exp(-0.5 * t.square())).square() + xt.sin().mean(0).square()
    return ((err @ weights) * z.shape[0]).mean()


@pytest.mark.parametrize(
    ("scale", "shift", "knots", "t_max"),
    [(1.0, 0.0, 17, 3.0), (1.3, 0.2, 17, 3.0), (4.0, 0.0, 17, 3.0), (0.1, 0.0, 9, 2.0),
     (1.0, 2.0, 33, 5.0)],
)  # fmt: skip
def test_sigreg_value_and_gradient_match_the_direct_form(
    scale: float, shift: float, knots: int, t_max: float
) -> None:
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(1024, 32, generator=generator) * scale + shift
    directions = sigreg_directions(32, 128, step=3)
    values, grads = [], []
    for statistic in (sigreg, _sigreg_direct):
        z = base.clone().requires_grad_()
        value = statistic(z, directions, knots, t_max)
        value.backward()
        assert z.grad is not None
        values.append(value.detach())
        grads.append(z.grad)
    assert float(values[0]) == pytest.approx(float(values[1]), rel=1e-5)
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


def test_sigreg_gradient_passes_gradcheck_in_fp64_inputs() -> None:
    # gradcheck in fp64 on the (N, M) projections: the analytic backward is the derivative
    z = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    directions = sigreg_directions(4, 3, step=1).double()

    def statistic(z: torch.Tensor) -> torch.Tensor:
        from jepa_lab.core.strategies.sigreg import _CharacteristicFunction

        cos_mean, sin_mean = _CharacteristicFunction.apply(z @ directions, 0.25, 9)
        return torch.cat([cos_mean, sin_mean])

    assert torch.autograd.gradcheck(statistic, (z,))


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


def strategy_kinds() -> list[str]:
    """Every ``kind`` of the spec's strategy union: a new strategy is covered without listing it."""
    union = get_args(get_args(StrategySpec)[0])
    return [get_args(cls.model_fields["kind"].annotation)[0] for cls in union]


@pytest.mark.parametrize("kind", strategy_kinds())
def test_every_strategy_of_the_union_trains_checkpoints_and_reports(
    kind: str, smoke_path: Path, tmp_path: Path
) -> None:
    overrides = [f"strategy.kind={kind}", "optim.steps=4", "log_every=2", "eval.baselines=false"]
    spec = load(ExperimentSpec, smoke_path, overrides)
    result = train(spec, options=TrainOptions(run_dir=tmp_path))
    assert [row["step"] for row in result.history] == [2.0, 4.0]
    assert all(math.isfinite(v) for row in result.history for v in row.values())
    _, strategy = build_training(spec, 4)
    # The strategy's own values, and only those, are what the loop adds to a logged row.
    own = strategy.metrics(1)
    assert all(isinstance(v, float) for v in own.values())
    assert set(own) <= set(result.history[0])
    assert "eval/probe_acc" in result.metrics
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_only_ema_logs_a_momentum_and_through_its_metrics_hook(smoke_path: Path) -> None:
    for kind, expected in (("ema", {"train/momentum"}), ("sigreg", set()), ("none", set())):
        spec = load(ExperimentSpec, smoke_path, [f"strategy.kind={kind}"])
        _, strategy = build_training(spec, 10)
        assert set(strategy.metrics(5)) == expected
    ramp = ["strategy.kind=ema", "strategy.momentum_start=0.9", "strategy.momentum_end=1.0"]
    _, strategy = build_training(load(ExperimentSpec, smoke_path, ramp), 10)
    assert strategy.metrics(5) == {"train/momentum": pytest.approx(0.95)}
