"""The training loop of world models: generated Two-Rooms trajectories, one ``train_step``, then
the rollout, diagnostics and planning evaluation (:mod:`jepa_lab.eval.world`).

Like the image loop, each step's batch is a pure function of (seed, step), the host reads nothing
back from the device except at log steps, and the result goes through the same
:class:`~jepa_lab.training.result.TrainResult` (result.json, MLflow) path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import torch

from jepa_lab.core.world import WorldLosses, WorldModel, update_target, world_losses
from jepa_lab.data import tworooms
from jepa_lab.data.datasets import batch_indices
from jepa_lab.eval.world import evaluate_world, stream_seed
from jepa_lab.spec.experiment import EmaSpec
from jepa_lab.spec.world import WorldSpec
from jepa_lab.training.distributed import pick_device
from jepa_lab.training.optim import build_optimizer, lr_at, weight_decay_at
from jepa_lab.training.provenance import provenance
from jepa_lab.training.result import TrainResult


class WorldTrainingError(Exception):
    """World-model training cannot go on (a non-finite loss); the message names the step."""


def world_train_step(
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    actions: torch.Tensor,
    spec: WorldSpec,
    step: int,
) -> WorldLosses:
    """One optimiser step on a batch of frames (B, T, C, S, S) and actions (B, T-1, 2): the
    schedules at ``step``, forward, backward, clipping, the update and the EMA target's."""
    total = spec.optim.total_steps(spec.data.trajectories)
    lr, wd = lr_at(spec.optim, step, total), weight_decay_at(spec.optim, step, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = 0.0 if group.get("no_decay") else wd
    losses = world_losses(model, frames, actions, spec, step)
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    if spec.optim.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.grad_clip)
    optimizer.step()
    update_target(model, spec, step, total)
    return losses


def train_world(
    spec: WorldSpec,
    log: Callable[[Mapping[str, float], int], None],
    progress: Callable[[str, int, int], None],
    device: str | None,
) -> TrainResult:
    """Generate data, train ``spec``'s world model, evaluate it and return the result."""
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    began = time.perf_counter()
    data = tworooms.generate(
        spec.env, spec.data, spec.data.trajectories, spec.data.length, spec.seed, "train"
    )
    crossing = {
        "data/crossing_share": data.crossing_share(spec.env),
        "data/crossing_trajectory_share": data.crossing_trajectory_share(spec.env),
    }
    generate_seconds = time.perf_counter() - began
    frames, actions = data.frames.to(dev), data.actions.to(dev)
    n = spec.data.trajectories
    total = spec.optim.total_steps(n)
    model = WorldModel(spec, spec.seed).to(dev)
    optimizer = build_optimizer(model, spec.optim, fused=dev.type == "cuda")
    result = TrainResult(spec, 0, provenance=provenance(dev), dataset={
        "name": "tworooms", "origin": "generated", "digest": data.digest(), "trajectories": n,
        "length": spec.data.length, "image_shape": list(frames.shape[2:]),
        "seed": stream_seed("train", spec.seed),
        "crossing_share": crossing["data/crossing_share"],
        "crossing_trajectory_share": crossing["data/crossing_trajectory_share"],
    })  # fmt: skip
    log({**crossing, "data/generate_seconds": generate_seconds}, 0)
    sums = torch.zeros(4, device=dev)
    window, window_start = 0, time.perf_counter()
    train_began = window_start
    model.train()
    for step in range(total):
        index = batch_indices(n, spec.optim.batch_size, step, spec.seed).to(dev)
        losses = world_train_step(model, optimizer, frames[index], actions[index], spec, step)
        reg = losses.regulariser if losses.regulariser is not None else torch.zeros(())
        sums += torch.stack([losses.total, losses.teacher, losses.rollout, reg.to(dev)]).detach()
        window += 1
        done = step + 1
        progress("train", done, total)
        if done % spec.log_every == 0 or done == total:
            means = (sums / window).tolist()
            if not all(map(torch.isfinite, torch.tensor(means))):
                raise WorldTrainingError(f"loss became non-finite by step {done}: {spec.name}")
            elapsed = time.perf_counter() - window_start
            lr, wd = lr_at(spec.optim, step, total), weight_decay_at(spec.optim, step, total)
            row = {
                "train/loss": means[0], "train/loss_pred": means[1],
                "train/loss_rollout": means[2], "train/loss_reg": means[3], "train/lr": lr,
                "train/weight_decay": wd,
                "train/images_per_second": window * spec.optim.batch_size * spec.data.length
                / elapsed,
            }  # fmt: skip
            if isinstance(spec.strategy, EmaSpec):
                from jepa_lab.core.strategies.ema import momentum_at

                row["train/momentum"] = momentum_at(spec.strategy, step, total)
            result.history.append({"step": float(done), **row})
            log(row, done)
            sums.zero_()
            window, window_start = 0, time.perf_counter()
    result.steps = total
    result.train_seconds = time.perf_counter() - train_began
    result.images_per_second = (
        total * spec.optim.batch_size * spec.data.length / max(result.train_seconds, 1e-9)
    )
    progress("eval", 0, 1)
    eval_began = time.perf_counter()
    metrics, series, predictions = evaluate_world(model, spec)
    metrics |= crossing
    metrics["eval/seconds"] = time.perf_counter() - eval_began
    result.metrics, result.series, result.predictions = metrics, series, predictions
    log(metrics, total)
    progress("eval", 1, 1)
    return result
