"""Planning on Two-Rooms: CEM in a world model's latent space, and its baselines (random
actions; CEM with the true simulator, the planner's upper bound).

Episodes are a pure function of (split, task, seed), so every arm plans the same episodes
(paired): success is compared with McNemar's exact test on the discordant pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from jepa_lab.data import tworooms
from jepa_lab.data.seeds import derive_seed
from jepa_lab.eval.probe import wilson_interval
from jepa_lab.spec.world import PlanningSpec, TwoRoomsSpec

# candidate action sequences (E, N, H, 2) -> cost (E, N); the episode's state is bound inside
Cost = Callable[[Tensor, Tensor], Tensor]  # (positions (E, 2), actions (E, N, H, 2)) -> (E, N)


@dataclass(frozen=True)
class Episodes:
    """Starts and goals (E, 2) of a task's episodes."""

    starts: Tensor
    goals: Tensor


def episodes(spec: TwoRoomsSpec, n: int, task: str, split: str, seed: int) -> Episodes:
    """``n`` episodes of ``task`` ('same': goal in the start's room; 'cross': the other room),
    from the seed stream (split, task, seed): 'val' and 'test' never share one."""
    generator = torch.Generator().manual_seed(derive_seed("episodes", split, task, seed))
    room = (torch.rand(n, generator=generator) < 0.5).long()
    goal_room = room if task == "same" else 1 - room
    starts = tworooms.sample_positions(n, spec, generator, room)
    goals = tworooms.sample_positions(n, spec, generator, goal_room)
    return Episodes(starts, goals)


def colored_noise(
    shape: tuple[int, ...], beta: float, generator: torch.Generator, dim: int = -2
) -> Tensor:
    """Standard Gaussian noise whose power spectrum along ``dim`` is 1/f^beta (iCEM's sampling
    noise, after the ``colorednoise`` package: Timmer and Koenig 1995, exactly normalised): every
    element has unit variance, consecutive ones are correlated for beta > 0. beta 0 is
    ``torch.randn`` itself (the same numbers)."""
    if beta == 0:
        return torch.randn(shape, generator=generator)
    dim = dim % len(shape)
    n = shape[dim]
    freqs = torch.fft.rfftfreq(n, dtype=torch.float64)
    scale = freqs.clamp_min(1.0 / n) ** (-beta / 2)
    # variance of one irfft output: (2 s_0^2 + 4 sum of the complex bins' s_k^2 + 2 s_Nyquist^2)
    # / n^2 (DC and, for even n, Nyquist are real, drawn with variance 2 s^2 below)
    power = 4 * scale.square()
    power[0] /= 2
    if n % 2 == 0:
        power[-1] /= 2
    sigma = float(power.sum().sqrt()) / n
    moved = (*shape[:dim], *shape[dim + 1 :], len(freqs))
    real = torch.randn(moved, generator=generator, dtype=torch.float64) * scale
    imag = torch.randn(moved, generator=generator, dtype=torch.float64) * scale
    if n % 2 == 0:  # the Nyquist coefficient has no imaginary part
        imag[..., -1] = 0
        real[..., -1] *= math.sqrt(2)
    imag[..., 0] = 0  # nor has the mean's
    real[..., 0] *= math.sqrt(2)
    noise = torch.fft.irfft(torch.complex(real, imag), n=n) / sigma
    return noise.float().movedim(-1, dim).contiguous()


def cem(
    cost: Cost,
    positions: Tensor,
    horizon: int,
    spec: PlanningSpec,
    max_step: float,
    seed: int,
    init: Tensor | None = None,
) -> Tensor:
    """Action sequences (E, H, 2) minimising ``cost``: Gaussian CEM, refitted on the elites,
    sampling with noise coloured along the horizon by ``spec.noise_beta``, from the mean
    ``init`` (E, H, 2) (a warm start) or zero."""
    generator = torch.Generator().manual_seed(seed)
    e = positions.shape[0]
    mean = torch.zeros(e, horizon, 2) if init is None else init.clone()
    std = torch.full((e, horizon, 2), max_step)
    for _ in range(spec.iterations):
        noise = colored_noise((e, spec.samples, horizon, 2), spec.noise_beta, generator)
        candidates = tworooms.clip_actions(mean.unsqueeze(1) + std.unsqueeze(1) * noise, max_step)
        costs = cost(positions, candidates)  # (E, N)
        elite = costs.topk(spec.elites, dim=1, largest=False).indices
        chosen = candidates.gather(1, elite[..., None, None].expand(-1, -1, horizon, 2))
        mean, std = chosen.mean(1), chosen.std(1).clamp_min(0.05 * max_step)
    return tworooms.clip_actions(mean, max_step)


def step_weights(horizon: int, how: str) -> Tensor:
    """(H,) weights of the per-step costs: only the last step, or linear toward the end."""
    if how == "final":
        weights = torch.zeros(horizon)
        weights[-1] = 1
        return weights
    ramp = torch.arange(1, horizon + 1, dtype=torch.float32)
    return ramp / ramp.sum()


def simulator_cost(spec: TwoRoomsSpec, goals: Tensor, how: str) -> Cost:
    """Cost of candidates under the true dynamics: distance of the positions to the goal."""

    def cost(positions: Tensor, actions: Tensor) -> Tensor:
        e, n, h, _ = actions.shape
        pos = positions.unsqueeze(1).expand(e, n, 2).reshape(-1, 2)
        goal = goals.unsqueeze(1).expand(e, n, 2).reshape(-1, 2)
        weights = step_weights(h, how)
        total = torch.zeros(e * n)
        for k in range(h):
            pos = tworooms.step(pos, actions[:, :, k].reshape(-1, 2), spec)
            if weights[k] > 0:
                total += weights[k] * (pos - goal).norm(dim=-1)
        return total.reshape(e, n)

    return cost


@dataclass
class Outcome:
    """Per-episode results (E,) of one arm on one task."""

    success: Tensor  # bool
    distance: Tensor
    effort: Tensor  # sum of squared actions
    smoothness: Tensor  # sum of squared action changes
    seconds: float  # planning time per episode

    def summary(self) -> dict[str, float]:
        n = int(self.success.numel())
        rate = float(self.success.float().mean()) if n else float("nan")
        low, high = wilson_interval(int(self.success.sum()), n)
        return {
            "success": rate,
            "success_low": low,
            "success_high": high,
            "distance": float(self.distance.mean()),
            "effort": float(self.effort.mean()),
            "smoothness": float(self.smoothness.mean()),
            "seconds_per_episode": self.seconds,
        }


# (positions (E, 2), horizon, seed, initial mean (E, horizon, 2) or None) -> actions (E, H, 2)
Planner = Callable[[Tensor, int, int, Tensor | None], Tensor]


def shifted(plan: Tensor, executed: int, horizon: int) -> Tensor:
    """The warm start of the next plan (E, horizon, 2): ``plan``'s steps after the ``executed``
    ones, then zeros (iCEM's shift initialisation)."""
    rest = plan[:, executed : executed + horizon]
    return torch.cat([rest, rest.new_zeros(rest.shape[0], horizon - rest.shape[1], 2)], 1)


def run_episodes(
    planner: Planner | None,
    env: TwoRoomsSpec,
    spec: PlanningSpec,
    tasks: Episodes,
    mode: str,
    seed: int,
) -> Outcome:
    """Execute a planner's actions in the true simulator. ``mode`` 'receding' replans every
    ``replan_every`` steps with ``horizon``; 'open_loop' plans all ``max_steps`` at once.
    ``planner`` None: uniformly random displacements (the random baseline)."""
    pos = tasks.starts.clone()
    e = pos.shape[0]
    executed: list[Tensor] = []
    seconds = 0.0
    generator = torch.Generator().manual_seed(seed)
    every = spec.max_steps if mode == "open_loop" else spec.replan_every
    horizon = spec.max_steps if mode == "open_loop" else spec.horizon
    plan: Tensor | None = None
    for start in range(0, spec.max_steps, every):
        if planner is None:
            angle = torch.rand(e, every, generator=generator) * 2 * math.pi
            size = env.max_step * torch.rand(e, every, generator=generator).sqrt()
            plan = torch.stack([angle.cos(), angle.sin()], -1) * size.unsqueeze(-1)
        else:
            began = time.perf_counter()
            # the goal is judged at the episode's end: never plan past it
            steps = min(horizon, spec.max_steps - start)
            init = shifted(plan, every, steps) if spec.warm_start and plan is not None else None
            plan = planner(pos, steps, seed + start, init)
            seconds += time.perf_counter() - began
        for k in range(min(every, plan.shape[1], spec.max_steps - start)):
            pos = tworooms.step(pos, plan[:, k], env)
            executed.append(tworooms.clip_actions(plan[:, k], env.max_step))
    actions = torch.stack(executed, 1)  # (E, T, 2)
    distance = (pos - tasks.goals).norm(dim=-1)
    return Outcome(
        success=distance <= env.success_radius,
        distance=distance,
        effort=actions.square().sum((1, 2)),
        smoothness=(actions[:, 1:] - actions[:, :-1]).square().sum((1, 2)),
        seconds=seconds / max(e, 1),
    )


def success_bits(success: Tensor) -> str:
    """Per-episode successes as text ("0110..."), kept with a result so that a study can pool
    the paired episodes of its seeds (:func:`jepa_lab.study.export.planning_comparisons`)."""
    return "".join("1" if bool(s) else "0" for s in success.reshape(-1).tolist())


def success_array(bits: str) -> np.ndarray:
    """:func:`success_bits`'s text back to (E,) booleans."""
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")
