"""Frozen-feature evaluation: one linear-probe procedure and one kNN for every encoder and baseline.

The probe is a converged full-batch L-BFGS multinomial logistic regression: an under-fitted probe
(e.g. a few epochs of SGD) can lose 15 points on the same features, which turns every comparison
into noise. Its L2 strength is chosen on a validation split carved from the training features; the
test split is scored once, with the chosen model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lab.spec import EvalSpec

# float64 because the fit runs to a tight tolerance: in float32 the loss stops changing near
# 1e-7 relative, the strong-Wolfe line search then fails on rounding noise, and whether it does
# depends on the BLAS kernel, so the "same" probe could stop at different points on two machines.
# It costs ~2x the time of float32 (see the timing in docs): still seconds for 128-d features.
_DTYPE = torch.float64
# Constant features are floored relative to the typical feature scale, so the probe is invariant
# to a global rescaling of the features and a constant column stays a constant (bias-absorbed) 0.
_STD_FLOOR = 1e-6
_TOLERANCE_GRAD = 1e-7
_TOLERANCE_CHANGE = 1e-12
# DINO's weighted kNN: each neighbour votes with exp(cosine / T).
_KNN_TEMPERATURE = 0.07


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe fit."""

    test_acc: float  # accuracy on the test split, reported once
    val_acc: float  # accuracy on the validation split for the chosen l2
    l2: float  # chosen L2 strength
    iterations: int  # L-BFGS iterations of the final fit


def _check_labelled(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: expected features (N, D) and labels (N,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: features must be floating point, got {x.dtype}")


def _canonical_order(x: Tensor, y: Tensor, seed: int) -> Tensor:
    """(N,) permutation sorting the samples by a seeded hash of their (features, label) bytes.

    The hash depends only on each sample's content, so the permutation puts the same samples in
    the same places whatever order they came in: the validation split (the first rows of this
    order) and every reduction inside the fit are then bitwise independent of the input order.
    Samples with equal keys have identical features and label, so their relative order is moot.
    """
    key = str(seed).encode()
    rows = x.detach().to("cpu", _DTYPE).contiguous().numpy()
    labels = y.detach().to("cpu", torch.int64).contiguous().numpy()
    digests = [
        hashlib.blake2b(row.tobytes() + label.tobytes(), digest_size=16, key=key).digest()
        for row, label in zip(rows, labels, strict=True)
    ]
    order = sorted(range(len(digests)), key=digests.__getitem__)
    return torch.tensor(order, dtype=torch.int64, device=x.device)


def _fit(
    x: Tensor, y: Tensor, n_classes: int, l2: float, max_iter: int, init: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, int]:
    """Multinomial logistic regression by full-batch L-BFGS; x (N, D) standardised, y (N,).

    Minimises mean cross-entropy + l2 * ||W||^2 (the bias is not regularised). Returns the
    weights (D, C), bias (C,) and the number of L-BFGS iterations taken.
    """
    weight = init[0].clone().requires_grad_(True)
    bias = init[1].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=_TOLERANCE_GRAD,
        tolerance_change=_TOLERANCE_CHANGE,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations


def _accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    return float(((x @ weight + bias).argmax(1) == y).to(_DTYPE).mean())


def fit_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, spec: EvalSpec, seed: int
) -> ProbeResult:
    """Linear probe: choose L2 on a validation split, refit on all training features, test once.

    train_x (N, D), test_x (M, D) features of any float dtype; train_y (N,), test_y (M,) integer
    labels in [0, C) with C = max(train_y) + 1. Features are standardised with the training
    features' mean and std; the validation split (``spec.val_fraction`` of N) is a seeded hash
    of each sample's content, so the result does not depend on the order of the samples. The L2
    grid is walked from the largest value down, each fit warm-started from the previous one
    (a regularisation path); ties in validation accuracy go to the larger L2. The final fit on
    train+val starts from the chosen L2's solution. Deterministic for a given seed.
    """
    _check_labelled(train_x, train_y, "train")
    _check_labelled(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} features, test {test_x.shape[1]}")
    n = train_x.shape[0]
    n_val = round(spec.val_fraction * n)
    if not 1 <= n_val <= n - 1:
        raise ValueError(f"val_fraction {spec.val_fraction} of {n} samples leaves an empty split")

    order = _canonical_order(train_x, train_y, seed)
    x = train_x.detach().to(_DTYPE)[order]
    y = train_y.detach().to(torch.int64)[order]
    n_classes = int(y.max()) + 1
    mean = x.mean(0)
    std = x.std(0)
    floor = _STD_FLOOR * float(std.mean()) if float(std.mean()) > 0 else 1.0
    std = std.clamp_min(floor)
    x = (x - mean) / std

    x_val, y_val, x_fit, y_fit = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    params = (x.new_zeros(x.shape[1], n_classes), x.new_zeros(n_classes))
    best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
    for l2 in sorted(spec.l2_grid, reverse=True):
        weight, bias, _ = _fit(x_fit, y_fit, n_classes, l2, spec.max_iter, params)
        params = (weight, bias)
        val_acc = _accuracy(x_val, y_val, weight, bias)
        if best is None or val_acc > best[0]:  # strict: ties keep the larger l2
            best = (val_acc, l2, params)
    assert best is not None
    val_acc, l2, chosen = best

    weight, bias, iterations = _fit(x, y, n_classes, l2, spec.max_iter, chosen)
    test = (test_x.detach().to(x.device, _DTYPE) - mean) / std
    test_acc = _accuracy(test, test_y.to(x.device, torch.int64), weight, bias)
    return ProbeResult(test_acc=test_acc, val_acc=val_acc, l2=l2, iterations=iterations)


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    k: int,
    n_classes: int,
    chunk: int = 2048,
) -> float:
    """Weighted cosine kNN accuracy (DINO's evaluation): neighbours vote with exp(cos / 0.07).

    train_x (N, D), test_x (M, D) features; train_y (N,), test_y (M,) labels in [0, n_classes).
    Test rows are processed ``chunk`` at a time, so memory is O(chunk * N), not O(M * N).
    """
    _check_labelled(train_x, train_y, "train")
    _check_labelled(test_x, test_y, "test")
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"knn k={k} needs 1 <= k <= {train_x.shape[0]} training samples")
    device = train_x.device
    bank = F.normalize(train_x.detach().float(), dim=1)  # (N, D)
    bank_y = train_y.detach().to(device, torch.int64)
    correct = 0
    for start in range(0, test_x.shape[0], chunk):
        query = F.normalize(test_x[start : start + chunk].detach().to(device).float(), dim=1)
        top_sim, top_idx = (query @ bank.T).topk(k, dim=1)  # (c, k)
        votes = query.new_zeros(query.shape[0], n_classes)
        votes.scatter_add_(1, bank_y[top_idx], (top_sim / _KNN_TEMPERATURE).exp())
        labels = test_y[start : start + chunk].to(device, torch.int64)
        correct += int((votes.argmax(1) == labels).sum())
    return correct / test_x.shape[0]


def pooled_features(
    encode: Callable[[Tensor], Tensor],
    prepare: Callable[[Tensor], Tensor],
    images: Tensor,
    batch_size: int,
    device: torch.device | str,
) -> Tensor:
    """Mean-pooled token embeddings of every image: (N, D) float32 on the CPU.

    images (N, C, H, W) uint8 on any device; ``prepare`` turns a uint8 batch on ``device`` into
    the encoder's float input (e.g. ``lambda x: normalise(x, mean, std)``); ``encode`` maps it to
    tokens (B, T, D), which are averaged over T. Features stay on the device until the end, so
    the loop makes no host sync.
    """
    pooled = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            tokens = encode(prepare(batch))
            if tokens.ndim != 3:
                raise ValueError(f"encode must return tokens (B, T, D), got {tuple(tokens.shape)}")
            pooled.append(tokens.float().mean(1))
    return torch.cat(pooled).cpu()
