"""The JEPA objective of one batch, shared by the training step and held-out evaluation: the
prediction loss and I-JEPA's target normalisation, as pure functions of tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jepa_lab.core.masks import Masks
from jepa_lab.core.models import gather_tokens
from jepa_lab.core.strategies import Strategy
from jepa_lab.spec.experiment import LossSpec


def prediction_loss(pred: torch.Tensor, target: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """Mean smooth-L1 (or MSE) between predicted and target embeddings, both (..., D)."""
    if spec.kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=spec.beta)
    return F.mse_loss(pred, target)


def normalise_targets(tokens: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """Non-affine LayerNorm over the feature dim (I-JEPA's target normalisation), (B, N, D)."""
    if not spec.target_norm:
        return tokens
    return F.layer_norm(tokens, tokens.shape[-1:])


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
