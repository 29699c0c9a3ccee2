"""The action-conditioned world model and its losses.

A small CNN encoder, then an MLP projector with BatchNorm (LayerNorm there fights SIGReg's pull
toward N(0, I)), gives one latent (D) per frame; a residual MLP predictor maps a short history of
latents and an action to the next latent (as in PLDM, Sobal et al. 2025, and LeWM). Losses are
pure functions of tensors: teacher forcing, an optional open-loop rollout loss (PLDM, V-JEPA 2-AC,
arXiv:2506.09985), and SIGReg over the batch at each time step, averaged over time (LeWM).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jepa_lab.core.strategies.ema import ema_update, momentum_at
from jepa_lab.core.strategies.sigreg import sigreg, sigreg_directions
from jepa_lab.spec.experiment import EmaSpec, NoneSpec, SigregSpec
from jepa_lab.spec.world import WorldLossSpec, WorldModelSpec, WorldSpec


class FrameEncoder(nn.Module):
    """uint8 frames (N, C, S, S) -> latents (N, D): 3 strided convs, then the projector."""

    def __init__(self, spec: WorldModelSpec, channels: int) -> None:
        super().__init__()
        c = spec.channels
        self.conv = nn.Sequential(
            nn.Conv2d(channels, c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.projector = nn.Sequential(
            nn.Linear(4 * c * 16, spec.projector_hidden),
            nn.BatchNorm1d(spec.projector_hidden),
            nn.ReLU(),
            nn.Linear(spec.projector_hidden, spec.latent),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.projector(self.conv(frames.float() / 255))


class Predictor(nn.Module):
    """History (B, H, D) and action (B, 2) -> next latent (B, D), predicted as a residual."""

    def __init__(self, spec: WorldModelSpec, max_step: float) -> None:
        super().__init__()
        width = spec.pred_hidden
        self.max_step = max_step  # actions enter in units of the largest step
        self.inp = nn.Linear(spec.history * spec.latent + 2, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                          nn.Linear(width, width))
            for _ in range(spec.pred_blocks)
        )  # fmt: skip
        self.out = nn.Linear(width, spec.latent)

    def forward(self, history: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([history.flatten(1), action / self.max_step], -1))
        for block in self.blocks:
            x = x + block(x)
        return history[:, -1] + self.out(x)


class WorldModel(nn.Module):
    """Encoder and predictor; ``target`` is the EMA copy of the encoder (strategy ema) or None."""

    def __init__(self, spec: WorldSpec, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.history = spec.model.history
        self.encoder = FrameEncoder(spec.model, 2)
        self.predictor = Predictor(spec.model, spec.env.max_step)
        self.target: FrameEncoder | None = None
        if isinstance(spec.strategy, EmaSpec):
            self.target = copy.deepcopy(self.encoder).requires_grad_(False)

    def encode(self, frames: torch.Tensor, *, target: bool = False) -> torch.Tensor:
        """Frames (B, T, C, S, S) -> latents (B, T, D); ``target``: the target encoder's space
        (the EMA copy where there is one)."""
        encoder = self.target if target and self.target is not None else self.encoder
        b, t = frames.shape[:2]
        return encoder(frames.flatten(0, 1)).reshape(b, t, -1)

    def step(self, history: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Next latent (B, D) from the last ``history`` latents (B, >=H, D) and action (B, 2)."""
        return self.predictor(history[:, -self.history :], action)


def pad_history(z: torch.Tensor, history: int) -> torch.Tensor:
    """(B, T, D) -> (B, T + history - 1, D), the first latent repeated in front."""
    return torch.cat([z[:, :1].expand(-1, history - 1, -1), z], 1)


def rollout(
    model: WorldModel,
    start: torch.Tensor,
    actions: torch.Tensor,
    correct: object | None = None,
) -> torch.Tensor:
    """Open-loop predictions (B, K, D) from real latents ``start`` (B, h, D) under ``actions``
    (B, K, 2), each prediction fed back as context; ``correct`` (a callable (B, D) -> (B, D))
    is applied to every predicted step."""
    context = pad_history(start, model.history)
    out = []
    for k in range(actions.shape[1]):
        z = model.step(context, actions[:, k])
        if correct is not None:
            z = correct(z)  # type: ignore[operator]
        out.append(z)
        context = torch.cat([context[:, 1:], z.unsqueeze(1)], 1)
    return torch.stack(out, 1)


@dataclass
class WorldLosses:
    total: torch.Tensor
    teacher: torch.Tensor
    rollout: torch.Tensor
    regulariser: torch.Tensor | None


def teacher_forcing(model: WorldModel, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Next-latent predictions (B, T-1, D) from the real latents z (B, T, D), every step."""
    h = model.history
    padded = pad_history(z, h)  # (B, T + h - 1, D)
    windows = padded.unfold(1, h, 1)[:, : z.shape[1] - 1]  # (B, T-1, D, h)
    b, t = windows.shape[:2]
    history = windows.permute(0, 1, 3, 2).reshape(b * t, h, -1)
    return model.step(history, actions.reshape(b * t, 2)).reshape(b, t, -1)


def sigreg_over_time(z: torch.Tensor, spec: SigregSpec, step: int) -> torch.Tensor:
    """SIGReg of the batch at each time step of z (B, T, D), averaged over time (LeWM)."""
    directions = sigreg_directions(z.shape[-1], spec.directions, step)
    values = [sigreg(z[:, t], directions, spec.knots, spec.t_max) for t in range(z.shape[1])]
    return torch.stack(values).mean()


def world_losses(
    model: WorldModel,
    frames: torch.Tensor,
    actions: torch.Tensor,
    spec: WorldSpec,
    step: int,
) -> WorldLosses:
    """Losses of a batch of frames (B, T, C, S, S) and actions (B, T-1, 2)."""
    z = model.encode(frames)
    match spec.strategy:
        case EmaSpec():
            with torch.no_grad():
                targets = model.encode(frames, target=True)
        case NoneSpec(stop_gradient=True):
            targets = z.detach()
        case _:
            targets = z  # LeJEPA uses no stop-gradient
    teacher = F.mse_loss(teacher_forcing(model, z, actions), targets[:, 1:])
    loss: WorldLossSpec = spec.loss
    rolled = torch.zeros((), device=z.device)
    k = loss.rollout_steps
    if k:
        start = z[:, : model.history]
        pred = rollout(model, start, actions[:, model.history - 1 : model.history - 1 + k])
        rolled = F.mse_loss(pred, targets[:, model.history : model.history + k])
    prediction = teacher + loss.rollout_weight * rolled
    reg = None
    total = prediction
    if isinstance(spec.strategy, SigregSpec):
        reg = sigreg_over_time(z, spec.strategy, step)
        lam = spec.strategy.lambda_
        total = (1 - lam) * prediction + lam * reg
    return WorldLosses(total, teacher, rolled, reg)


@torch.no_grad()
def update_target(model: WorldModel, spec: WorldSpec, step: int, total: int) -> None:
    """The EMA target's update after an optimiser step (strategy ema only)."""
    if model.target is not None and isinstance(spec.strategy, EmaSpec):
        ema_update(model.target, model.encoder, momentum_at(spec.strategy, step, total))
        # BatchNorm's running statistics are buffers, not parameters: the target takes the
        # online encoder's, else in eval mode it would normalise with its initial ones
        for mine, theirs in zip(model.target.buffers(), model.encoder.buffers(), strict=True):
            mine.copy_(theirs)
