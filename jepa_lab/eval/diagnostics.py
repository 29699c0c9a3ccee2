"""Collapse diagnostics, computed identically for every strategy (EMA, SIGReg, none).

All are pure functions of evaluation embeddings, returning Python floats, so runs with different
strategies share the same axes. None standardises its input: collapse *is* a matter of scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lab.core.models import gather_tokens
from jepa_lab.core.strategies.sigreg import sigreg, sigreg_directions

# RankMe's epsilon (Garrido et al. 2023), added to each normalised singular value.
_RANKME_EPS = 1e-7
# VICReg's epsilon inside the square root of the per-dimension variance.
_VICREG_EPS = 1e-4


def _check_matrix(z: Tensor) -> None:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"expected embeddings (N, D) with N >= 2, got {tuple(z.shape)}")


def rankme(z: Tensor) -> float:
    """RankMe (Garrido et al. 2023): effective rank of the (N, D) embeddings, in [1, min(N, D)].

    exp(entropy) of the singular values s normalised to sum 1 (each + 1e-7), computed in float64
    on the raw matrix (no centring, no standardisation). ~1 for a collapsed embedding, ~D for
    isotropic Gaussian rows with N >> D. NaN for an all-zero matrix (it has no spectrum).
    """
    _check_matrix(z)
    s = torch.linalg.svdvals(z.detach().double())
    total = s.sum()
    if total == 0:
        return float("nan")
    p = s / total + _RANKME_EPS
    return float(torch.exp(-(p * p.log()).sum()))


def mean_std(z: Tensor) -> float:
    """VICReg's per-dimension std of the (N, D) embeddings: mean over j of sqrt(Var(z_j) + 1e-4).

    Unbiased variance over N, in float64. Because the 1e-4 sits inside the root (as VICReg
    defines it), a fully collapsed embedding gives 0.01, not 0; standard-Gaussian rows give ~1.
    """
    _check_matrix(z)
    return float((z.detach().double().var(0) + _VICREG_EPS).sqrt().mean())


def sigreg_statistic(
    z: Tensor,
    directions_seed: int = 0,
    directions: int = 256,
    knots: int = 17,
    t_max: float = 3.0,
    chunk: int = 1024,
) -> float:
    """SIGReg statistic (distance from N(0, I)) of (N, K) evaluation embeddings at a fixed n.

    The Epps-Pulley statistic (``jepa_lab.core.strategies.sigreg.sigreg``) is N times an
    integrated squared characteristic-function error, so for a non-Gaussian distribution it grows
    linearly with N while a Gaussian stays at ~1.05: values at different N are not comparable.
    Dividing by N instead would make the Gaussian reference ~1.05 / N. So the statistic is taken
    on consecutive chunks of ``n = min(chunk, N)`` rows and averaged over the N // n full chunks
    (leftover rows are dropped; the mean over chunks only lowers the variance). The directions are
    fixed (``sigreg_directions(K, directions, directions_seed)``), so the value is deterministic.

    References at chunk size n: ~1.05 for standard-Gaussian rows; for a collapsed (all-equal)
    embedding at least 0.402 * n (412 at n = 1024), the minimum, reached when all rows are 0
    (a constant off the origin scores higher, up to ~1.1 * n). Not standardised: a Gaussian of
    the wrong scale, or off-centre, also scores high, since SIGReg regularises towards N(0, I).
    """
    _check_matrix(z)
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    n = min(chunk, z.shape[0])
    dirs = sigreg_directions(z.shape[1], directions, directions_seed)
    with torch.no_grad():
        values = [
            sigreg(z[start : start + n].detach(), dirs, knots=knots, t_max=t_max)
            for start in range(0, z.shape[0] - n + 1, n)
        ]
        return float(torch.stack(values).mean())


def positional_share(tokens: Tensor) -> float:
    """Fraction of the token embeddings' variance explained by position alone, in [0, 1].

    tokens (B, N, D): target-encoder embeddings of B images at N positions. Returns the
    between-position sum of squares over the total, in float64:
    sum_p B * ||mean_b tokens[b, p] - m||^2 / sum_{b, p} ||tokens[b, p] - m||^2, m the grand mean.
    1 when tokens depend only on position (the encoder ignores the image), 0 when the per-position
    means coincide. For tokens independent of position its expectation is (N - 1) / (B N - 1),
    about 1 / B, so use B >> 1 (B >= 2 is required). NaN when the tokens have no variance at all
    (a constant embedding): "no variance" is not "no positional content".
    """
    if tokens.ndim != 3 or tokens.shape[0] < 2:
        raise ValueError(f"expected tokens (B, N, D) with B >= 2, got {tuple(tokens.shape)}")
    t = tokens.detach().double()
    grand = t.mean((0, 1))  # (D,)
    total = (t - grand).square().sum()
    if total == 0:
        return float("nan")
    between = t.shape[0] * (t.mean(0) - grand).square().sum()
    return float(between / total)


def prediction_error(predictions: Tensor, tokens: Tensor, targets: Tensor) -> Tensor:
    """The fixed prediction measure: MSE between predictions and LayerNorm'd target tokens.

    predictions (B, T, Nt, K); tokens (B, N, K), the evaluation encoder's full-image tokens;
    targets (B, T, Nt) their indices. The tokens get a non-affine LayerNorm over K (I-JEPA's
    target normalisation) whatever loss the run trained with, so every trial is scored in the
    same unit: 0 for a perfect prediction, 1 for predicting 0 everywhere. Mind that a collapsed
    target (every token alike) is easy to predict, so a small value is no evidence of learning on
    its own: pair it with a collapse measure (rankme, std, sigreg). A scalar tensor, float32.
    """
    normalised = F.layer_norm(tokens.float(), tokens.shape[-1:])
    gathered = gather_tokens(normalised, targets.flatten(1)).view(predictions.shape)
    return F.mse_loss(predictions.float(), gathered)
