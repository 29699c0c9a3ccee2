"""Drift metrics, corrections, planning and the quick world-model preset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jepa_lab.eval import paired, planning
from jepa_lab.eval.probe import wilson_interval
from jepa_lab.eval.rollout import Bank, build_correction, nmse, retrieval_top1
from jepa_lab.eval.world import oracle_planner
from jepa_lab.spec.world import CorrectionSpec, PlanningSpec, WorldSpec

REAL = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))


def test_nmse_reference_levels() -> None:
    true = REAL[:2048].reshape(256, 8, 16)
    assert nmse(true, true, REAL, 1e-4).abs().max() == 0
    mean = REAL.mean(0).expand_as(true)
    assert nmse(mean, true, REAL, 1e-4).sub(1).abs().max() < 0.1
    shuffled = true[torch.randperm(256, generator=torch.Generator().manual_seed(1))]
    assert nmse(shuffled, true, REAL, 1e-4).sub(2).abs().max() < 0.3
    assert retrieval_top1(true, true).eq(1).all()


def test_collapsed_model_gives_nan_nmse() -> None:
    collapsed = torch.ones(512, 16) + 1e-5 * torch.randn(512, 16)
    true = collapsed[:64].reshape(8, 8, 16)
    assert torch.isnan(nmse(true, true, collapsed, 1e-4)).all()


def test_corrections() -> None:
    bank = Bank(REAL[:1024], frozenset({1}))
    z = 3 * torch.randn(32, 16)
    for kind in ("none", "renorm", "knn"):
        identity = build_correction(  # alpha = 0 is the identity
            CorrectionSpec(kind=kind, alpha=0), REAL, bank, frozenset({2}), kind
        )
        assert torch.equal(identity(z), z)
    renorm = build_correction(
        CorrectionSpec(kind="renorm", alpha=1), REAL, bank, frozenset({2}), "renorm"
    )
    torch.testing.assert_close(renorm(renorm(z)), renorm(z))
    with pytest.raises(AssertionError, match="share seeds"):
        build_correction(CorrectionSpec(kind="knn"), REAL, bank, frozenset({1}), "knn")


def tiny_spec(**planning_settings: object) -> WorldSpec:
    return WorldSpec.model_validate({
        "kind": "world_model", "strategy": {"kind": "sigreg"},
        "optim": {"steps": 3, "batch_size": 16}, "data": {"trajectories": 32},
        "eval": {"trajectories": 8, "probe_frames": 64},
        "correction": {"kind": "knn", "bank_trajectories": 4},
        "planning": {"episodes": 2, "val_episodes": 2, "samples": 8, "elites": 2, "iterations": 1,
                     "horizon": 2, "max_steps": 4, **planning_settings},
        "log_every": 1,
    })  # fmt: skip


def test_cem_with_the_true_simulator_solves_same_room_tasks() -> None:
    spec = tiny_spec()
    plan = PlanningSpec(episodes=16)  # the shipped planner settings
    tasks = planning.episodes(spec.env, 16, "same", "test", 0)
    world = spec.model_copy()  # only env and planning are read
    object.__setattr__(world, "planning", plan)
    outcome = planning.run_episodes(
        oracle_planner(world, tasks.goals), spec.env, plan, tasks, "receding", 0
    )
    assert outcome.success.float().mean() >= 0.9


@pytest.mark.parametrize("length", [8, 16, 17])
def test_cem_noise_has_unit_variance_and_its_colour_keeps_a_heading(length: int) -> None:
    def noise(beta: float) -> torch.Tensor:
        return planning.colored_noise((3000, length, 2), beta, torch.Generator().manual_seed(1))

    white, red = noise(0.0), noise(2.0)
    assert torch.equal(
        white, torch.randn((3000, length, 2), generator=torch.Generator().manual_seed(1))
    )
    lag1 = [float((x[:, 1:] * x[:, :-1]).mean()) for x in (white, red)]
    for x in (white, noise(1.0), red):  # every step a standard normal
        assert x.std(0).mean() == pytest.approx(1.0, abs=0.03)
        assert x.mean().abs() < 0.03
    assert abs(lag1[0]) < 0.03 and lag1[1] > 0.5
    # what it is for: a red sequence's summed displacement reaches further
    assert red.sum(1).std() > 1.4 * white.sum(1).std()  # 1.47x at 8 steps, 2.0x at 16


@pytest.mark.parametrize("warm", [False, True])
def test_a_warm_start_hands_each_plan_the_rest_of_the_previous_one(warm: bool) -> None:
    spec = tiny_spec()
    plan = PlanningSpec(episodes=3, horizon=6, max_steps=10, replan_every=4, warm_start=warm)
    tasks = planning.episodes(spec.env, 3, "same", "test", 0)
    calls: list[tuple[int, torch.Tensor | None]] = []

    def planner(pos: torch.Tensor, horizon: int, seed: int, init: torch.Tensor | None):
        calls.append((horizon, init))
        return torch.arange(horizon * 2.0).repeat(pos.shape[0], 1).reshape(-1, horizon, 2) / 20

    planning.run_episodes(planner, spec.env, plan, tasks, "receding", 0)
    assert [h for h, _ in calls] == [6, 6, 2]  # never past the episode's 10 steps
    if not warm:
        assert all(init is None for _, init in calls)
        return
    assert calls[0][1] is None
    previous = planner(tasks.starts, 6, 0, None)
    second = calls[1][1]
    assert second is not None and second.shape == (3, 6, 2)
    assert torch.equal(second[:, :2], previous[:, 4:6])  # the two steps not executed
    assert torch.equal(second[:, 2:], torch.zeros(3, 4, 2))  # then zeros
    assert torch.equal(calls[2][1], previous[:, 4:6])


def test_wilson_and_mcnemar() -> None:
    low, high = wilson_interval(8, 10)
    assert 0.4 < low < 0.8 < high < 1
    a = torch.tensor([True] * 10 + [False] * 10)
    assert paired.mcnemar_exact(a, a) == 1.0
    assert paired.mcnemar_exact(a, torch.zeros(20, dtype=torch.bool)) < 0.01


def test_quick_preset_writes_every_metric_and_reruns_identically() -> None:
    from jepa_lab.training.loop import train

    spec = tiny_spec()
    first, second = train(spec), train(spec)
    assert set(first.series) >= {
        f"drift/{m}/{k}"
        for m in ("nmse", "cosine", "retrieval", "probe_error")
        for k in ("none", "renorm", "knn")
    }
    assert all(len(v) == 30 for v in first.series.values())
    for key in (
        "wm/val_nmse_final",
        "wm/val_success",
        "wm/val_effort",
        "diag/rankme",
        "diag/sigreg",
        "plan/test/cross/receding/cem/success",
        "plan/test/same/receding/oracle/success",
        "plan/test/same/receding/mcnemar_cem_knn_vs_cem",
        "drift/nmse_k30/knn",
        "data/crossing_share",
        "data/crossing_trajectory_share",
    ):
        assert key in first.metrics
    assert first.dataset["digest"] == second.dataset["digest"]  # what MLflow's dataset input needs
    same = {k: v for k, v in first.metrics.items() if "seconds" not in k}
    again = {k: v for k, v in second.metrics.items() if "seconds" not in k}
    assert same.keys() == again.keys()
    assert all(
        math.isclose(v, again[k], rel_tol=1e-5) or (math.isnan(v) and math.isnan(again[k]))
        for k, v in same.items()
    )
    assert json.dumps(first.series) == json.dumps(second.series)  # NaN-aware
