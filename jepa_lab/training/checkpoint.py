"""Atomic checkpoints that resume on any world size and load with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from jepa_lab.core.strategies import Strategy
from jepa_lab.spec.experiment import ExperimentSpec


class Records(TypedDict):
    """What a run has logged so far, as plain rows (``weights_only`` loads them)."""

    history: list[dict[str, float]]  # training metrics at log steps
    curve: list[dict[str, float]]  # probe against steps (eval.every)
    # The open log window: sums of loss, loss_pred, loss_reg (averaged over ranks) and its steps,
    # so a run resumed between log steps logs the rows an uninterrupted one logs.
    window: list[float]


EMPTY_WINDOW = [0.0, 0.0, 0.0, 0.0]


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or belongs to another spec."""


def save_checkpoint(
    path: Path,
    spec: ExperimentSpec,
    step: int,
    model: nn.Module,
    strategy: Strategy,
    optimizer: torch.optim.Optimizer,
    records: Records,
) -> None:
    """Write the training state at ``step`` (steps done) to ``path`` atomically.

    Plain state dicts of the unwrapped modules: a checkpoint from N ranks resumes on M ranks.
    ``records`` (the logged rows and probe curve so far) make a resumed run's result whole.
    """
    state = {
        "spec": spec.to_dict(),
        "spec_digest": spec.digest(),
        "step": step,
        "model": model.state_dict(),
        "strategy": strategy.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "records": records,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw state of a checkpoint (tensors on the CPU)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (drop --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from exc


def load_weights(
    path: Path, spec: ExperimentSpec, model: nn.Module, strategy: Strategy
) -> dict[str, Any]:
    """Restore the model and strategy weights saved at ``path`` (by the same spec); returns the
    whole saved state."""
    state = read_checkpoint(path)
    if state["spec_digest"] != spec.digest():
        raise CheckpointError(
            f"{path} was written by another spec (digest {state['spec_digest']}, this spec "
            f"{spec.digest()}): resume with the same spec or start a new run directory"
        )
    model.load_state_dict(state["model"])
    strategy.load_state_dict(state["strategy"])
    return state


def load_checkpoint(
    path: Path,
    spec: ExperimentSpec,
    model: nn.Module,
    strategy: Strategy,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, Records]:
    """Restore the state saved at ``path`` into the given modules; returns the steps done and
    the records saved with them."""
    state = load_weights(path, spec, model, strategy)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    # Checkpoints written before records (or their window) existed resume with an empty one.
    records = state.get("records", {"history": [], "curve": []})
    return int(state["step"]), Records(
        history=records["history"],
        curve=records["curve"],
        window=list(records.get("window", EMPTY_WINDOW)),
    )
