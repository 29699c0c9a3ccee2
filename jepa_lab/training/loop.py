"""The one training loop shared by every strategy.

Every random choice of a step (its batch, augmentation and masks) is a pure function of the
run's seed and the step, drawn for the *global* batch; each rank takes its rows. So a resumed run
replays nothing, and N ranks x B/N compute what 1 rank x B computes. The loop reads nothing back
from the device except at log steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from jepa_lab.core.masks import Masks, sample_masks
from jepa_lab.core.models import JEPA, match_attention
from jepa_lab.core.objective import jepa_losses
from jepa_lab.core.strategies import Strategy, build_training
from jepa_lab.data.datasets import Dataset, augment, batch_indices, load_dataset
from jepa_lab.data.seeds import derive_seed
from jepa_lab.eval.deploy import deploy, embedder, resolve_backend
from jepa_lab.eval.evaluate import curve_point, evaluate, probe_now
from jepa_lab.spec.experiment import ExperimentSpec, LossSpec
from jepa_lab.spec.world import WorldSpec
from jepa_lab.training.checkpoint import (
    EMPTY_WINDOW,
    Records,
    load_checkpoint,
    save_checkpoint,
)
from jepa_lab.training.distributed import World, checksum, join_world, leave_world, pick_device
from jepa_lab.training.optim import build_optimizer, lr_at, weight_decay_at
from jepa_lab.training.precision import autocast, resolve_precision
from jepa_lab.training.provenance import provenance
from jepa_lab.training.result import TrainResult, describe
from jepa_lab.training.world_loop import train_world

Log = Callable[[Mapping[str, float], int], None]
Progress = Callable[[str, int, int], None]


class TrainingError(Exception):
    """Training cannot go on (non-finite loss, bad world size); the message names the step."""


class NonFiniteError(TrainingError):
    """The loss (or an objective) became NaN or infinite: the run diverged."""


@dataclass(frozen=True)
class TrainOptions:
    """Machine settings: where and how a spec runs, never what it means."""

    device: str | None = None  # None: CUDA, then MPS, then CPU
    data_dir: Path | None = None
    run_dir: Path | None = None  # checkpoint and result.json go here
    resume: bool = False
    compile: bool = False
    precision: str | None = None  # auto, fp32, bf16; None: bf16 on CUDA, else fp32 (precision.py)
    threads: int | None = None  # CPU threads; None: this process's cores over its local ranks
    checkpoint_every: int = 0  # steps; 0 = only at the end
    stop_at: int | None = None  # stop (with a checkpoint) after this many steps: interruptions
    run_id: str = ""  # the tracking run the rows go to, kept in checkpoints for a resume


def global_batch(
    spec: ExperimentSpec, data: Dataset, step: int, device: torch.device
) -> tuple[torch.Tensor, Masks]:
    """Augmented images (B, C, H, W) and masks of the global batch at ``step``."""
    batch = spec.optim.batch_size
    index = batch_indices(len(data.train_labels), batch, step, spec.seed).to(device)
    generator = torch.Generator(device).manual_seed(derive_seed("augment", spec.seed, step))
    images = augment(data.train_images[index], spec.data.augment, data.mean, data.std, generator)
    masks = sample_masks(spec.mask, spec.grid, batch, derive_seed("masks", spec.seed, step))
    if device.type == "cuda":  # pinned, so the copy does not wait for the device queue
        masks = masks.pin_memory()
    return images, masks.to(device)


def train_step(
    model: nn.Module,
    strategy: Strategy,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: Masks,
    loss_spec: LossSpec,
    step: int,
    grad_clip: float | None,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward, backward, optimiser step and strategy update; returns detached losses.

    ``precision`` is a resolved one (fp32, bf16: see :func:`resolve_precision`); None is the
    default, ``auto``. fp32 opens no autocast context at all: the step from before the setting.
    """
    with autocast(precision or resolve_precision(None, images.device), images.device):
        losses = jepa_losses(model, strategy, images, masks, loss_spec, step)
    loss = losses.total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    strategy.update(step)
    reg = losses.regulariser
    return loss.detach(), losses.prediction.detach(), None if reg is None else reg.detach()


def nothing(*_: object) -> None:
    """The default ``log`` and ``progress`` hook."""
    return None


def _probe_curve(
    spec: ExperimentSpec,
    data: Dataset,
    model: JEPA,
    strategy: Strategy,
    device: torch.device,
    world: World,
    result: TrainResult,
    log: Log,
    step: int,
) -> float:
    """Probe the model mid-run on rank 0 (``eval.every``) and return the seconds it took; the
    other ranks wait for it at a barrier without a short timeout (a probe on many images can
    outlast the process group's)."""
    began = time.perf_counter()
    if world.is_main:
        curve = probe_now(spec, data, model, strategy, device)
        result.curve.append({"step": float(step), **curve})
        log(curve, step)
    world.wait_for_main()
    return time.perf_counter() - began


def _open_window(
    world: World, sums: torch.Tensor, steps: int, first_bad: torch.Tensor, spec: ExperimentSpec
) -> list[float]:
    """The open log window for a checkpoint: ``sums`` (3,) averaged over ranks (a collective,
    so every rank calls it) and its step count. A checkpoint step reads the device anyway; a
    non-finite loss in the window fails here rather than being saved."""
    if int(first_bad) >= 0:
        raise TrainingError(f"loss became non-finite at step {int(first_bad)}: {spec.name}")
    return [*world.mean_(sums.clone()).tolist(), float(steps)]


def _records(result: TrainResult, window: list[float], options: TrainOptions) -> Records:
    """What a checkpoint keeps for a resumed run, with the tracking run id if there is one."""
    records = result.records(window)
    if options.run_id:
        records["run_id"] = options.run_id
    return records


def train(
    spec: ExperimentSpec | WorldSpec,
    log: Log = nothing,
    progress: Progress = nothing,
    options: TrainOptions | None = None,
) -> TrainResult:
    """Pre-train ``spec``, evaluate it (rank 0) and return the result. A world-model spec is
    trained by :func:`jepa_lab.training.world_loop.train_world` (one process)."""
    options = options or TrainOptions()
    if isinstance(spec, WorldSpec):
        result = train_world(spec, log, progress, options.device)
        if options.run_dir is not None:
            options.run_dir.mkdir(parents=True, exist_ok=True)
        return result
    device = pick_device(options.device)
    if device.type == "cpu":  # all cores, shared among the local ranks (or the budget given)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = options.threads or len(os.sched_getaffinity(0)) // local_ranks
        torch.set_num_threads(max(1, threads))
    world = join_world(device)
    try:
        return _run(spec, log, progress, options, device, world)
    finally:
        leave_world(world)


def _run(
    spec: ExperimentSpec,
    log: Log,
    progress: Progress,
    options: TrainOptions,
    device: torch.device,
    world: World,
) -> TrainResult:
    if spec.optim.batch_size % world.size:
        raise TrainingError(
            f"optim.batch_size {spec.optim.batch_size} is the global batch and must divide "
            f"evenly over {world.size} processes: pick a multiple of {world.size}"
        )
    precision = resolve_precision(options.precision, device)
    if spec.eval.deploy.enabled:  # a missing INT8 backend fails before any training
        resolve_backend(spec.eval.deploy.backend, device.type)
    data = load_dataset(spec.data, options.data_dir).to(device)
    total = spec.optim.total_steps(len(data.train_labels))
    model, strategy = build_training(spec, total, world.all_reduce_mean(), world.size)
    model, strategy = model.to(device), strategy.to(device)
    match_attention(model.modules(), precision, device)
    match_attention(strategy.modules(), precision, device)
    optimizer = build_optimizer(model, spec.optim, fused=device.type == "cuda")
    checkpoint = options.run_dir / "checkpoint.pt" if options.run_dir else None
    start, records = 0, Records(history=[], curve=[], window=list(EMPTY_WINDOW))
    if options.resume and checkpoint is not None:
        start, records = load_checkpoint(checkpoint, spec, model, strategy, optimizer)
    trained: nn.Module = model
    if world.size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if options.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    stop = min(total, options.stop_at or total)
    # loss, loss_pred, loss_reg summed since the last log (restored mid-window on a resume)
    sums = torch.tensor(records["window"][:3], device=device)
    window_steps = int(records["window"][3])
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    result = TrainResult(  # with the rows and curve logged before a resume, if any
        spec, start, history=records["history"], curve=records["curve"],
        provenance=provenance(device, precision), dataset=describe(data),
    )  # fmt: skip
    if spec.eval.every and start == 0:
        _probe_curve(spec, data, model, strategy, device, world, result, log, 0)
    window_start, timed_steps = time.perf_counter(), 0  # throughput: this process's steps
    began = window_start
    for step in range(start, stop):
        lr, wd = lr_at(spec.optim, step, total), weight_decay_at(spec.optim, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = 0.0 if group.get("no_decay") else wd
        images, masks = global_batch(spec, data, step, device)
        rows = world.shard(spec.optim.batch_size)
        loss, loss_pred, reg = train_step(
            trained, strategy, optimizer, images[rows], masks.rows(rows.start, rows.stop),
            spec.loss, step, spec.optim.grad_clip, precision,
        )  # fmt: skip
        parts = torch.stack([loss, loss_pred, reg if reg is not None else torch.zeros_like(loss)])
        sums += parts
        # A scalar fill: no host-to-device copy, so no sync, in the hot loop.
        first_bad.masked_fill_((first_bad < 0) & ~torch.isfinite(loss), step)
        window_steps += 1
        timed_steps += 1
        done = step + 1
        if world.is_main:
            progress("train", done, total)
        # An interruption (stop_at) logs no row: its open window goes into the checkpoint.
        if done % spec.log_every == 0 or done == total:
            world.mean_(sums)
            if world.disagree(checksum(model) + checksum(strategy)):
                raise TrainingError(
                    f"weights differ between ranks at step {done}: the ranks diverged "
                    "(non-deterministic kernels or a rank-dependent bug)"
                )
            if int(first_bad) >= 0:
                raise NonFiniteError(
                    f"loss became non-finite at step {int(first_bad)}: {spec.name}"
                )
            elapsed = time.perf_counter() - window_start
            means = (sums / window_steps).tolist()
            row = {
                "train/loss": means[0],
                "train/loss_pred": means[1],
                "train/loss_reg": means[2],
                "train/lr": lr,
                "train/weight_decay": wd,
                "train/images_per_second": timed_steps * spec.optim.batch_size / elapsed,
            }
            row |= strategy.metrics(step)
            result.history.append({"step": float(done), **row})
            if world.is_main:
                log(row, done)
            sums.zero_()
            window_steps = 0
            window_start, timed_steps = time.perf_counter(), 0
        if spec.eval.every and done % spec.eval.every == 0 and done < total:
            spent = _probe_curve(spec, data, model, strategy, device, world, result, log, done)
            window_start += spent  # probing is not training time
            began += spent
        every = options.checkpoint_every
        if checkpoint and every and done % every == 0:
            window = _open_window(world, sums, window_steps, first_bad, spec)  # every rank
            if world.is_main:
                records = _records(result, window, options)
                save_checkpoint(checkpoint, spec, done, model, strategy, optimizer, records)
    result.steps = stop
    result.train_seconds = time.perf_counter() - began
    result.images_per_second = (stop - start) * spec.optim.batch_size / result.train_seconds
    if checkpoint:
        window = _open_window(world, sums, window_steps, first_bad, spec)  # every rank
        if world.is_main:
            records = _records(result, window, options)
            save_checkpoint(checkpoint, spec, stop, model, strategy, optimizer, records)
    if stop < total:
        result.completed = False
        return result
    if world.is_main:
        result.metrics = evaluate(
            spec, data, model, strategy, device, progress, predictions=result.predictions
        )
        log(result.metrics, stop)
        if spec.eval.every:
            result.curve.append({"step": float(stop), **curve_point(result.metrics)})
        encoder = strategy.eval_encoder(model.encoder)
        if spec.eval.deploy.enabled:  # on a copy: the model and its checkpoint stay as they are
            progress("deploy", 0, 1)
            report = deploy(spec, spec.eval.deploy, data, encoder, device)
            result.metrics |= report.metrics
            result.deploy, result.encoder, result.int8 = report.context, report.fp32, report.int8
            log(report.metrics, stop)
            progress("deploy", 1, 1)
        else:
            result.encoder = embedder(encoder, data)
    return result
