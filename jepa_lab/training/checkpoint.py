"""Atomic checkpoints that resume on any world size and load with ``weights_only=True``.

Each checkpoint carries a SHA-256 of its payload (every tensor's bytes and every other value, in
a fixed order), so a flipped bit is refused on load instead of resuming from damaged weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn
from typing_extensions import NotRequired  # typing's from Python 3.11

from jepa_lab.core.strategies import Strategy
from jepa_lab.spec.experiment import ExperimentSpec


class Records(TypedDict):
    """What a run has logged so far, as plain rows (``weights_only`` loads them)."""

    history: list[dict[str, float]]  # training metrics at log steps
    curve: list[dict[str, float]]  # probe against steps (eval.every)
    # The open log window: sums of loss, loss_pred, loss_reg (averaged over ranks) and its steps,
    # so a run resumed between log steps logs the rows an uninterrupted one logs.
    window: list[float]
    # The MLflow run the rows went to, so `train --resume` continues that run (a plain string:
    # training knows nothing of MLflow).
    run_id: NotRequired[str]


EMPTY_WINDOW = [0.0, 0.0, 0.0, 0.0]


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, damaged, foreign or belongs to another spec."""


# What a jepa-lab checkpoint holds besides its checksum ("records" came later: optional).
KEYS = ("spec", "spec_digest", "step", "model", "strategy", "optimizer", "rng_cpu")
CHECKSUM = "sha256"


def _feed(digest: Any, value: Any) -> None:
    """Hash ``value`` into ``digest``: mappings by sorted key, tensors by dtype, shape and bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:  # int, float, str, bool, None: repr round-trips them exactly
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


def checksum(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's payload: everything but the checksum itself."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != CHECKSUM})
    return digest.hexdigest()


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
    state[CHECKSUM] = checksum(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    except BaseException as exc:
        # a full disk or a kill mid-write: the previous checkpoint at ``path`` stays untouched
        partial.unlink(missing_ok=True)
        if isinstance(exc, Exception):  # torch reports a full disk as a RuntimeError
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CheckpointError(
                f"could not write checkpoint {path} ({reason}): free space on its disk or use "
                "another run directory; the previous checkpoint is kept"
            ) from exc
        raise


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw state of a checkpoint (tensors on the CPU), after checking it is jepa-lab's and
    undamaged. ``weights_only=True``: a pickled object other than tensors and plain values is
    refused, never executed."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (drop --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from exc
    missing = [key for key in (*KEYS, CHECKSUM) if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a jepa-lab checkpoint (no {', '.join(missing)}): remove it or "
            "start a new run directory"
        )
    if state[CHECKSUM] != checksum(state):
        raise CheckpointError(
            f"{path} is damaged (its SHA-256 does not match its contents): remove it and start "
            "again, or resume from a good copy"
        )
    return state


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
    restored = Records(
        history=records["history"],
        curve=records["curve"],
        window=list(records.get("window", EMPTY_WINDOW)),
    )
    if records.get("run_id"):
        restored["run_id"] = str(records["run_id"])
    return int(state["step"]), restored


def saved_run_id(path: Path) -> str | None:
    """The MLflow run id a checkpoint's rows were logged to, if any (None: no checkpoint, or
    one written untracked or before run ids were kept)."""
    if not path.is_file():
        return None
    run_id = read_checkpoint(path).get("records", {}).get("run_id")
    return str(run_id) if run_id else None
