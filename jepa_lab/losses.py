"""Loss math as pure functions of tensors: prediction losses and the SIGReg statistic."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from jepa_lab.spec import LossSpec


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


def sigreg_directions(dim: int, count: int, step: int) -> torch.Tensor:
    """(K, M) unit-norm random directions, a pure function of ``step`` (same on every rank).

    Drawn on the CPU generator, as the official code does, so every device and rank agrees.
    """
    generator = torch.Generator().manual_seed(step)
    directions = torch.randn((dim, count), generator=generator)
    return directions / directions.norm(p=2, dim=0, keepdim=True)


def _knots(n_points: int, t_max: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots t on [0, t_max] and trapezoid weights (doubled: symmetric half) * exp(-t^2/2)."""
    t = torch.linspace(0.0, t_max, n_points, device=device, dtype=torch.float32)
    dt = t_max / (n_points - 1)
    weights = torch.full((n_points,), 2 * dt, device=device, dtype=torch.float32)
    weights[0] = weights[-1] = dt
    return t, weights * torch.exp(-0.5 * t.square())


AllReduce = Callable[[torch.Tensor], torch.Tensor]


def sigreg(
    z: torch.Tensor,
    directions: torch.Tensor,
    knots: int = 17,
    t_max: float = 3.0,
    all_reduce_mean: AllReduce | None = None,
    world_size: int = 1,
) -> torch.Tensor:
    """SIGReg (Balestriero & LeCun 2025, arXiv:2511.08544): Epps-Pulley test against N(0, 1).

    z: (N, K) embeddings; directions: (K, M) unit vectors. Projects z on each direction, compares
    the empirical characteristic function with exp(-t^2/2) on the knots and returns the mean over
    directions of N * integral(err(t) * exp(-t^2/2)). ~1.05 for standard-Gaussian z at any N,
    exactly 0.402 * N for collapsed (all-equal) z. Computed in fp32 whatever the autocast state.
    Under DDP pass the autograd-aware ``all_reduce_mean`` and ``world_size``: the statistic is then
    that of the global batch.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        x = z.float() @ directions.to(z.device, torch.float32)  # (N, M)
        t, weights = _knots(knots, t_max, z.device)
        xt = x.unsqueeze(-1) * t  # (N, M, T)
        cos_mean = xt.cos().mean(0)  # (M, T)
        sin_mean = xt.sin().mean(0)
        if all_reduce_mean is not None:
            cos_mean = all_reduce_mean(cos_mean)
            sin_mean = all_reduce_mean(sin_mean)
        err = (cos_mean - torch.exp(-0.5 * t.square())).square() + sin_mean.square()
        statistic = (err @ weights) * (z.shape[0] * world_size)  # (M,)
        return statistic.mean()
