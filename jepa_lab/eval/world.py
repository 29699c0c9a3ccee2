"""The evaluation a world-model run ends with: rollout drift under every correction (with
reference levels), collapse diagnostics, and planning on same-room and cross-room tasks.

Validation data (``val`` trajectories and episodes) and the reported test data (``test``) come from
disjoint seed streams, as do the probe's frames and the kNN bank: a search reads ``wm/val_*``, the
test numbers are reported once. Runs on the CPU, BatchNorm in eval mode throughout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jepa_lab.core.world import WorldModel, rollout
from jepa_lab.data import tworooms
from jepa_lab.data.seeds import derive_seed
from jepa_lab.eval.diagnostics import mean_std, rankme, sigreg_statistic
from jepa_lab.eval.paired import mcnemar_exact
from jepa_lab.eval.planning import (
    Episodes,
    Outcome,
    Planner,
    cem,
    episodes,
    run_episodes,
    simulator_cost,
    step_weights,
    success_bits,
)
from jepa_lab.eval.rollout import (
    Bank,
    Correction,
    build_correction,
    drift_metrics,
    fit_ridge,
    reference_levels,
    spread,
)
from jepa_lab.spec.world import WorldSpec

KINDS = ("none", "renorm", "knn")
REPORTED = (1, 10, 20, 30)  # horizon steps of the drift table


def stream_seed(stream: str, seed: int) -> int:
    """The generator seed of a data stream (what :func:`tworooms.generate` uses)."""
    return derive_seed("tworooms", stream, seed)


@torch.no_grad()
def encode(model: WorldModel, frames: Tensor, chunk: int = 1024) -> Tensor:
    """Target-space latents (N, T, D) of uint8 frames (N, T, C, S, S), in chunks."""
    n, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = [model.encode(part.unsqueeze(1), target=True)[:, 0] for part in flat.split(chunk)]
    return torch.cat(out).reshape(n, t, -1)


def latent_planner(
    model: WorldModel, spec: WorldSpec, goals: Tensor, correction: Correction | None
) -> Planner:
    """CEM on the model: cost = (weighted) distance of predicted latents to the goal's latent."""
    goal_z = encode(model, tworooms.render_uint8(goals, spec.env).unsqueeze(1))[:, 0]

    @torch.no_grad()
    def plan(positions: Tensor, horizon: int, seed: int, init: Tensor | None) -> Tensor:
        z0 = encode(model, tworooms.render_uint8(positions, spec.env).unsqueeze(1))  # (E, 1, D)
        weights = step_weights(horizon, spec.planning.cost)

        def cost(_: Tensor, actions: Tensor) -> Tensor:
            e, n, h = actions.shape[:3]
            start = z0.repeat_interleave(n, 0)
            pred = rollout(model, start, actions.reshape(e * n, h, 2), correction)
            distance = (pred - goal_z.repeat_interleave(n, 0).unsqueeze(1)).norm(dim=-1)
            return (distance @ weights).reshape(e, n)

        return cem(cost, positions, horizon, spec.planning, spec.env.max_step, seed, init)

    return plan


def oracle_planner(spec: WorldSpec, goals: Tensor) -> Planner:
    """CEM with the true simulator: the planner's upper bound."""
    cost = simulator_cost(spec.env, goals, spec.planning.cost)

    def plan(positions: Tensor, horizon: int, seed: int, init: Tensor | None) -> Tensor:
        return cem(cost, positions, horizon, spec.planning, spec.env.max_step, seed, init)

    return plan


def _planning(
    model: WorldModel, spec: WorldSpec, corrections: dict[str, Correction], split: str, n: int
) -> tuple[dict[str, float], dict[str, Tensor]]:
    metrics: dict[str, float] = {}
    outcomes: dict[str, Tensor] = {}
    arms = ["none"] + ([spec.correction.kind] if spec.correction.kind != "none" else [])
    for task in ("same", "cross"):
        tasks: Episodes = episodes(spec.env, n, task, split, spec.seed)
        for mode in spec.planning.modes:
            seed = derive_seed("plan", split, task, mode, spec.seed)
            results: dict[str, Outcome] = {}
            for arm in arms:
                planner = latent_planner(model, spec, tasks.goals, corrections[arm])
                name = "cem" if arm == "none" else f"cem_{arm}"
                results[name] = run_episodes(planner, spec.env, spec.planning, tasks, mode, seed)
            if spec.planning.baselines:
                oracle = oracle_planner(spec, tasks.goals)
                results["oracle"] = run_episodes(oracle, spec.env, spec.planning, tasks, mode, seed)
                results["random"] = run_episodes(None, spec.env, spec.planning, tasks, mode, seed)
            prefix = f"plan/{split}/{task}/{mode}"
            for arm, outcome in results.items():
                metrics |= {f"{prefix}/{arm}/{k}": v for k, v in outcome.summary().items()}
                outcomes[f"{prefix}/{arm}"] = outcome.success
            for arm in results:
                if arm != "cem":
                    p = mcnemar_exact(results[arm].success, results["cem"].success)
                    metrics[f"{prefix}/mcnemar_{arm}_vs_cem"] = p
    return metrics, outcomes


@torch.no_grad()
def reference_latents(
    model: WorldModel, spec: WorldSpec
) -> tuple[tworooms.Trajectories, Tensor, Bank]:
    """The real frames every evaluation measures against: the ``probe`` walks, their latents
    (N, D) (the NMSE spread, the ridge probe, renorm's shell) and the kNN bank from the ``bank``
    stream (disjoint from evaluation)."""
    env, seed, length = spec.env, spec.seed, spec.data.length
    probe = tworooms.generate(
        env, spec.data, math.ceil(spec.eval.probe_frames / length), length, seed, "probe"
    )
    bank_data = tworooms.generate(
        env, spec.data, spec.correction.bank_trajectories, length, seed, "bank"
    )
    real = encode(model, probe.frames).flatten(0, 1)
    bank = Bank(
        encode(model, bank_data.frames).flatten(0, 1), frozenset({stream_seed("bank", seed)})
    )
    return probe, real, bank


@torch.no_grad()
def evaluate_world(
    model: WorldModel, spec: WorldSpec
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, str]]:
    """Scalar metrics, per-horizon series (K values each, logged with the horizon as step), and
    the per-episode test successes of every planning arm (``pred/plan/test/<task>/<mode>/<arm>``,
    :func:`~jepa_lab.eval.planning.success_bits`), paired across arms and, at equal seeds,
    across runs."""
    model = model.cpu().eval()
    env, ev, seed = spec.env, spec.eval, spec.seed
    probe, real, bank = reference_latents(model, spec)
    ridge = fit_ridge(real, probe.positions.flatten(0, 1), ev.ridge)
    metrics: dict[str, float] = {
        "data/probe_crossing_share": probe.crossing_share(env),
        "diag/rankme": rankme(real),
        "diag/std": mean_std(real),
        "diag/sigreg": sigreg_statistic(real),
        "diag/total_variance": float(spread(real)),
    }
    series: dict[str, list[float]] = {}
    corrections: dict[str, Correction] = {}
    for split in ("val", "test"):
        held = tworooms.generate(env, spec.data, ev.trajectories, ev.horizon + 1, seed, split)
        eval_seeds = frozenset({stream_seed(split, seed)})
        z = encode(model, held.frames)  # (N, K + 1, D)
        true, first = z[:, 1:], z[:, :1]
        refs = reference_levels(
            first[:, 0], true, held.positions[:, 1:], real, ev.collapse_threshold, seed
        )
        for kind in KINDS:
            correction = build_correction(spec.correction, real, bank, eval_seeds, kind)
            if split == "test":
                corrections[kind] = correction
            pred = rollout(model, first, held.actions, correction)
            arrays = drift_metrics(
                pred, true, held.positions[:, 1:], real, ridge, ev.collapse_threshold
            )
            for name, values in arrays.items():
                if split == "test":
                    series[f"drift/{name}/{kind}"] = values.tolist()
                    for k in REPORTED:
                        if k <= ev.horizon:
                            metrics[f"drift/{name}_k{k}/{kind}"] = float(values[k - 1])
                if split == "val" and kind == spec.correction.kind and name == "nmse":
                    metrics["wm/val_nmse_final"] = float(values[-1])
            metrics[f"drift/{'val' if split == 'val' else 'test'}_nmse_final/{kind}"] = float(
                arrays["nmse"][-1]
            )
        if split == "test":
            for name, values in refs.items():
                series[f"drift/ref/{name}"] = values.tolist()
                metrics[f"drift/ref/{name}_final"] = float(values[-1])
    metrics["diag/collapsed"] = float(math.isnan(metrics["wm/val_nmse_final"]))
    if spec.planning.val_episodes:
        corr = {k: v for k, v in corrections.items()}
        val_metrics, _ = _planning(model, spec, corr, "val", spec.planning.val_episodes)
        metrics |= val_metrics
        arm = "cem" if spec.correction.kind == "none" else f"cem_{spec.correction.kind}"
        mode = spec.planning.modes[0]
        metrics["wm/val_success"] = (
            sum(val_metrics[f"plan/val/{t}/{mode}/{arm}/success"] for t in ("same", "cross")) / 2
        )
        metrics["wm/val_effort"] = (
            sum(val_metrics[f"plan/val/{t}/{mode}/{arm}/effort"] for t in ("same", "cross")) / 2
        )
    predictions: dict[str, str] = {}
    if spec.planning.episodes:
        test_metrics, outcomes = _planning(model, spec, corrections, "test", spec.planning.episodes)
        metrics |= test_metrics
        predictions = {f"pred/{name}": success_bits(won) for name, won in outcomes.items()}
    return metrics, series, predictions
