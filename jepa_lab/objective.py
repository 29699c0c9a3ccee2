"""The JEPA objective of one batch, shared by the training step and held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from jepa_lab.losses import normalise_targets, prediction_loss
from jepa_lab.masks import Masks
from jepa_lab.models import gather_tokens
from jepa_lab.spec import LossSpec
from jepa_lab.strategies import Strategy


@dataclass(frozen=True)
class Losses:
    total: torch.Tensor  # what is minimised
    prediction: torch.Tensor  # prediction term alone
    regulariser: torch.Tensor | None  # the strategy's regulariser, if it has one


def jepa_losses(
    model: nn.Module,
    strategy: Strategy,
    images: torch.Tensor,
    masks: Masks,
    spec: LossSpec,
    step: int,
) -> Losses:
    """Predict the target blocks of ``images`` (B, C, H, W) from their context and score it."""
    predictions, context, full = model(images, masks, strategy.needs_full_pass)
    targets = normalise_targets(strategy.target_tokens(images, full).float(), spec)
    batch, blocks, n_target = masks.targets.shape
    targets = gather_tokens(targets, masks.targets.flatten(1)).view(batch, blocks, n_target, -1)
    prediction = prediction_loss(predictions.float(), targets, spec)
    total, reg = strategy.loss(prediction, full, context, step)
    return Losses(total, prediction, reg)
