"""Rollout drift of a world model: per-horizon metrics, their reference levels, and corrections.

Every metric is a pure function of tensors: predicted latents (N, K, D) of an autoregressive
rollout, the real latents (N, K, D) of the same frames, and the real latents' statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from jepa_lab.spec.world import CorrectionSpec


def spread(real: Tensor) -> Tensor:
    """Total variance of real latents (M, D): mean squared distance to their mean."""
    return (real - real.mean(0)).square().sum(-1).mean()


def is_collapsed(real: Tensor, threshold: float) -> bool:
    """Whether the real latents' variance per dimension is below ``threshold``."""
    return bool(spread(real) / real.shape[-1] < threshold)


def nmse(pred: Tensor, true: Tensor, real: Tensor, threshold: float) -> Tensor:
    """(K,) squared error per horizon step / the spread of the real latents ``real`` (M, D).

    0 for a perfect predictor, 1 for predicting the mean, ~2 for a random real latent. NaN when
    the real latents are collapsed (a collapsed model 'drifts' by zero)."""
    error = (pred - true).square().sum(-1).mean(0)  # (K,)
    if is_collapsed(real, threshold):
        return torch.full_like(error, float("nan"))
    return error / spread(real)


def centred_cosine(pred: Tensor, true: Tensor, mean: Tensor) -> Tensor:
    """(K,) mean cosine between prediction and truth, both centred on the real mean (D,)."""
    return torch.nn.functional.cosine_similarity(pred - mean, true - mean, dim=-1).mean(0)


def retrieval_top1(pred: Tensor, true: Tensor) -> Tensor:
    """(K,) share of predictions whose nearest real latent, among the N real latents of the
    same step, is their own."""
    distances = torch.cdist(pred.transpose(0, 1), true.transpose(0, 1))  # (K, N, N)
    own = torch.arange(pred.shape[0], device=pred.device)
    return (distances.argmin(-1) == own).float().mean(-1)


@dataclass(frozen=True)
class RidgeProbe:
    """Linear position probe on standardised latents: y = ((z - mean) / std) @ w + b."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def __call__(self, z: Tensor) -> Tensor:
        return ((z - self.mean) / self.std) @ self.weight + self.bias


def fit_ridge(z: Tensor, y: Tensor, l2: float) -> RidgeProbe:
    """Ridge regression of targets y (M, P) on latents z (M, D), features standardised (float64)."""
    z64, y64 = z.double(), y.double()
    mean, std = z64.mean(0), z64.std(0).clamp_min(1e-6)
    x = (z64 - mean) / std
    bias = y64.mean(0)
    gram = x.T @ x + l2 * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weight = torch.linalg.solve(gram, x.T @ (y64 - bias))
    return RidgeProbe(mean.float(), std.float(), weight.float(), bias.float())


# ---------------------------------------------------------------------------------- corrections

KNN_ROWS = 4096  # rows per kNN distance block: (4096, bank) floats at a time


@dataclass(frozen=True)
class Bank:
    """Encoded real frames (M, D) for the kNN correction, and the seeds they came from."""

    latents: Tensor
    seeds: frozenset[int]


@dataclass(frozen=True)
class Correction:
    """z <- (1 - alpha) z + alpha * project(z), applied to every predicted step (B, D)."""

    kind: str
    alpha: float
    mean: Tensor  # (D,) of real latents
    radius: Tensor  # mean norm of centred real latents
    bank: Tensor | None = None  # (M, D)
    k: int = 16
    temperature: float = 0.1
    scale: float = 1.0  # spread of the real latents (distances are relative to it)

    def project(self, z: Tensor) -> Tensor:
        if self.kind == "renorm":
            centred = z - self.mean
            return self.mean + centred * (
                self.radius / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            )
        if self.kind == "knn":
            assert self.bank is not None
            return torch.cat([self._knn(part) for part in z.split(KNN_ROWS)])
        return z

    @cached_property
    def _bank_sq(self) -> Tensor:
        """|b|^2 (M,) of the bank, once per correction (it is applied at every rollout step)."""
        assert self.bank is not None
        return self.bank.square().sum(-1)

    def _knn(self, z: Tensor) -> Tensor:
        """Soft projection of z (B, D) onto its k nearest bank latents. Squared distances as
        |b|^2 - 2 z.b (one matmul), ranked before |z|^2 is added: the order is the same."""
        assert self.bank is not None
        partial = torch.addmm(self._bank_sq, z, self.bank.T, alpha=-2)  # (B, M)
        near, index = partial.topk(min(self.k, self.bank.shape[0]), largest=False)
        near = (near + z.square().sum(-1, keepdim=True)).clamp_min(0)
        weights = torch.softmax(-near / (self.temperature * self.scale), -1)
        return (weights.unsqueeze(-1) * self.bank[index]).sum(1)

    def __call__(self, z: Tensor) -> Tensor:
        if self.kind == "none" or self.alpha == 0:
            return z
        return (1 - self.alpha) * z + self.alpha * self.project(z)


def build_correction(
    spec: CorrectionSpec, real: Tensor, bank: Bank | None, eval_seeds: frozenset[int], kind: str
) -> Correction:
    """The correction ``kind`` with ``spec``'s settings, from real latents (M, D) and the kNN
    ``bank``, whose seeds must be disjoint from the evaluation's (asserted)."""
    mean = real.mean(0)
    radius = (real - mean).norm(dim=-1).mean()
    latents = None
    if kind == "knn":
        if bank is None:
            raise ValueError("the knn correction needs a bank of encoded real frames")
        shared = bank.seeds & eval_seeds
        assert not shared, f"kNN bank and evaluation share seeds {sorted(shared)}"
        latents = bank.latents
    return Correction(
        kind, spec.alpha, mean, radius, latents, spec.knn_k, spec.temperature,
        float(spread(real)),
    )  # fmt: skip


# ------------------------------------------------------------------------------------ summary


def drift_metrics(
    pred: Tensor,
    true: Tensor,
    positions: Tensor,
    real: Tensor,
    probe: RidgeProbe,
    threshold: float,
) -> dict[str, Tensor]:
    """Per-horizon arrays (K,) of one rollout: NMSE, centred cosine, retrieval top-1 and probe
    position error (pixels). ``positions`` (N, K, 2) are the true positions of ``true``."""
    mean = real.mean(0)
    error = (probe(pred) - positions).norm(dim=-1).mean(0)
    return {
        "nmse": nmse(pred, true, real, threshold),
        "cosine": centred_cosine(pred, true, mean),
        "retrieval": retrieval_top1(pred, true),
        "probe_error": error,
    }


def reference_levels(
    first: Tensor, true: Tensor, positions: Tensor, real: Tensor, threshold: float, seed: int
) -> dict[str, Tensor]:
    """Reference NMSE per horizon (K,): copy the first latent, predict the mean (1), a random
    real latent (~2); and the probe's chance level (error of predicting the mean position)."""
    n, k = true.shape[:2]
    mean = real.mean(0)
    generator = torch.Generator().manual_seed(seed)
    random = real[torch.randint(real.shape[0], (n, k), generator=generator).to(real.device)]
    chance = (positions - positions.reshape(-1, 2).mean(0)).norm(dim=-1).mean(0)
    return {
        "nmse_copy": nmse(first.unsqueeze(1).expand_as(true), true, real, threshold),
        "nmse_mean": nmse(mean.expand_as(true), true, real, threshold),
        "nmse_random": nmse(random, true, real, threshold),
        "probe_error_chance": chance,
    }
