"""The optimiser and its schedules: AdamW (no weight decay on biases and norms), and the learning
rate and weight decay as pure functions of the step, so a resumed run replays nothing."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from jepa_lab.spec.experiment import OptimSpec


def lr_at(spec: OptimSpec, step: int, total: int) -> float:
    """Linear warmup lr_start -> lr over ``warmup * total`` steps, then cosine to lr_end."""
    warmup = int(spec.warmup * total)
    if step < warmup:
        return spec.lr_start + (spec.lr - spec.lr_start) * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return spec.lr_end + (spec.lr - spec.lr_end) * 0.5 * (1 + math.cos(math.pi * progress))


def weight_decay_at(spec: OptimSpec, step: int, total: int) -> float:
    """Cosine ramp from weight_decay_start to weight_decay_end over the run (I-JEPA)."""
    progress = min(step / max(total, 1), 1.0)
    start, end = spec.weight_decay_start, spec.weight_decay_end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, spec: OptimSpec, fused: bool) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and other 1-D parameters (norms)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay},
        {"params": no_decay, "weight_decay": 0.0, "no_decay": True},
    ]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas, fused=fused or None)
