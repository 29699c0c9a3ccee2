"""Frozen-feature evaluation: one linear-probe procedure and one kNN for every encoder and baseline.

The probe is a converged full-batch L-BFGS multinomial logistic regression: an under-fitted probe
(30 epochs of AdamW lost 14 points to it on the same random-init features) turns every comparison
into noise. Its L2 strength is chosen on a validation split carved from the training features; the
test split is scored once, with the chosen model.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import Tensor

from jepa_lab.spec.experiment import EvalSpec

# float32: each L-BFGS evaluation is two (N, D) x (D, C) products with C ~ 10, which a CPU BLAS
# runs at a fraction of its peak; in float64 the whole probe took 2.7x as long (128-d features
# of 20k Fashion-MNIST images) and chose the same L2, with a test accuracy 1 image in 10k apart.
# Mean, std and principal axes are still computed in float64.
_DTYPE = torch.float32
# Near-constant features are floored relative to the typical feature std, so the probe is
# invariant to a global rescaling of the features and a constant column stays a harmless 0.
_STD_FLOOR = 1e-6
# Max |gradient| of the mean loss at which L-BFGS stops (scikit-learn's default is 1e-4); below
# it, float32 rounding of the loss ends the fit instead (tolerance_change: no more progress).
_TOLERANCE_GRAD = 1e-6
_TOLERANCE_CHANGE = 1e-9
# Standardised features have eigenvalues ~1 on average; this only guards against 1 / 0.
_CURVATURE_FLOOR = 1e-6
# L-BFGS memory: its two-loop recursion is a Python loop, so a long history costs real time.
_HISTORY = 20
# DINO's weighted kNN: each neighbour votes with exp(cosine / T).
_KNN_TEMPERATURE = 0.07


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Outcome of one probe fit. Equal when every field is, the predictions element-wise (the
    generated ``__eq__`` would ask a multi-element tensor for its truth value)."""

    test_acc: float  # accuracy on the test split, reported once
    val_acc: float  # accuracy on the validation split for the chosen l2
    l2: float  # chosen L2 strength
    iterations: int  # L-BFGS iterations of the final fit
    # (M,) predicted test labels, for paired tests between encoders on the same images
    # (McNemar, a bootstrap over images); in the order of test_x
    test_pred: Tensor | None = None
    val_size: int = 0  # images in the validation split (the n of val_acc's binomial CI)
    val_ci: float = float("nan")  # half-width of the 95 % Wilson interval of val_acc

    def _scalars(self) -> tuple[float, float, float, int]:
        return (self.test_acc, self.val_acc, self.l2, self.iterations)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProbeResult) or self._scalars() != other._scalars():
            return False
        if self.test_pred is None or other.test_pred is None:
            return self.test_pred is other.test_pred
        return torch.equal(self.test_pred, other.test_pred)

    def __hash__(self) -> int:  # equal results have equal scalars
        return hash(self._scalars())


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``total`` trials (scipy's);
    (nan, nan) for no trial."""
    if total <= 0:
        return math.nan, math.nan
    ci = binomtest(correct, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_half_width(correct: int, total: int, confidence: float = 0.95) -> float:
    """Half the width of the Wilson score interval of ``correct`` successes in ``total`` trials.

    The interval is not centred on correct / total; its half-width is what a table shows as +-,
    so two accuracies whose intervals overlap widely are not told apart by their split.
    """
    low, high = wilson_interval(correct, total, confidence)
    return (high - low) / 2


def _check_labelled(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: expected features (N, D) and labels (N,), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: features must be floating point, got {x.dtype}")


def _canonical_order(x: Tensor, y: Tensor, ids: Tensor | None, seed: int) -> Tensor:
    """(N,) permutation sorting the samples by a seeded hash of their identity.

    x (N, D) float on the CPU, y (N,) int64, ids (N,) int64 unique sample identities (e.g.
    dataset indices) or None. With ids, each sample is hashed by its id, so the validation split
    (the first rows of this order) holds the same images for every encoder fitted on the same
    subset: two encoders' validation accuracies are then paired, which removes the split-to-split
    noise from comparisons. Without ids, the sample's (features, label) bytes stand in for its
    identity (hashed as float32). Either way the hash travels with the sample, so the split and
    every reduction of the fit are bitwise independent of the input order. Samples with equal
    content hashes are identical, so their relative order is moot. ~0.1 s for 20k x 128.
    """
    key = str(seed).encode()
    if ids is not None:
        rows = [int(i).to_bytes(8, "little", signed=True) for i in ids.tolist()]
    else:
        rows = [
            row.tobytes() + label.tobytes()
            for row, label in zip(x.float().numpy(), y.numpy(), strict=True)
        ]
    digests = [hashlib.blake2b(row, digest_size=16, key=key).digest() for row in rows]
    return torch.tensor(sorted(range(len(digests)), key=digests.__getitem__), dtype=torch.int64)


def _principal_axes(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (D,) and eigenvectors (D, D) of the second-moment matrix of x (N, D)."""
    moment = (x.T @ x).double() / x.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)
    return eigenvalues.clamp_min(0), eigenvectors


def _fit(
    x: Tensor,
    onehot: Tensor,
    l2: float,
    max_iter: int,
    axes: tuple[Tensor, Tensor],
    init: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor, int]:
    """Multinomial logistic regression by full-batch L-BFGS; x (N, D) standardised, onehot (N, C).

    Minimises mean cross-entropy + l2 * ||W||^2 (the bias is not regularised) over W (C, D) and
    b (C,), starting from ``init``; logits are x @ W.T + b, as in ``nn.Linear``. L-BFGS runs on V
    with W = V diag(s) U.T, U the principal axes of x and s = (eigenvalue + 2 * l2)^(-1/2): the
    same problem with its Hessian near the identity at the start (a third of the iterations on
    128-d Fashion-MNIST features). Returns W, b and the number of L-BFGS iterations.
    """
    eigenvalues, eigenvectors = axes
    # Floored for directions without data at l2 = 0: their gradient is 0, any finite scale works.
    curvature = (eigenvalues + 2 * l2).clamp_min(_CURVATURE_FLOOR)
    basis = (eigenvectors * curvature.rsqrt()).T.contiguous().to(_DTYPE)  # (D, D): W = V @ basis
    inverse = (eigenvectors * curvature.sqrt()).to(_DTYPE)  # V = W @ inverse
    v = init[0] @ inverse
    b = init[1].clone()
    optimizer = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=_TOLERANCE_GRAD,
        tolerance_change=_TOLERANCE_CHANGE,
        history_size=_HISTORY,
        line_search_fn="strong_wolfe",
    )
    n = x.shape[0]

    def closure() -> Tensor:
        # Gradients by hand: no autograd graph, and the two products over N keep the (N, D)
        # features in the operand order that the CPU BLAS runs fastest (x @ W.T, R.T @ x).
        weight = v @ basis
        log_p = F.linear(x, weight, b).log_softmax(1)  # (N, C)
        loss = -(log_p * onehot).sum() / n + l2 * weight.square().sum()
        residual = log_p.exp_().sub_(onehot).div_(n)  # (N, C): d loss / d logits
        v.grad = (residual.T @ x + 2 * l2 * weight) @ basis.T
        b.grad = residual.sum(0)
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[v].get("n_iter", 0))
    return v @ basis, b, iterations


def _accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor) -> float:
    return float((F.linear(x, weight, bias).argmax(1) == y).double().mean())


def encode_classes(classes: Tensor | bytes) -> str:
    """(M,) class ids in [0, 256) as text: zlib-compressed uint8 bytes in base64.

    10,000 Fashion-MNIST predictions take ~6 KB, small enough for result.json and a study's
    trial attributes.
    """
    if isinstance(classes, Tensor):
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) > 255):
            raise ValueError("class ids must lie in [0, 256) to be stored as uint8")
        classes = classes.detach().to("cpu", torch.uint8).numpy().tobytes()
    return base64.b64encode(zlib.compress(classes, 9)).decode("ascii")


def decode_classes(text: str) -> Tensor:
    """The (M,) int64 class ids :func:`encode_classes` stored."""
    raw = zlib.decompress(base64.b64decode(text))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)


def fit_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    spec: EvalSpec,
    seed: int,
    train_ids: Tensor | None = None,
) -> ProbeResult:
    """Linear probe: choose L2 on a validation split, refit on all training features, test once.

    train_x (N, D), test_x (M, D) features of any float dtype (computed in float32 on the CPU);
    train_y (N,), test_y (M,) integer labels in [0, C), C = max(train_y) + 1; train_ids (N,)
    unique integer identities of the training samples, or None. Features are standardised with
    the mean and std of train_x. The validation split (``spec.val_size`` samples) is taken by a
    seeded hash of each sample's id (of its content without ids), not by position, so the result
    does not depend on the order of the samples, and with ids every encoder is validated on the
    same samples. The L2 grid is walked from the largest value down, each fit warm-started from
    the previous one (a regularisation path); validation ties go to the larger L2. The final fit
    on train + val starts from the chosen L2's solution.
    Deterministic for given inputs and seed on a given machine and thread count.
    """
    _check_labelled(train_x, train_y, "train")
    _check_labelled(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} features, test {test_x.shape[1]}")
    n = train_x.shape[0]
    n_val = spec.val_size
    if not 1 <= n_val <= n - 1:
        raise ValueError(
            f"eval.val_size {n_val} of {n} training samples leaves nothing to fit the probe on: "
            "lower eval.val_size"
        )
    if train_ids is not None and (train_ids.shape != train_y.shape or len(train_ids.unique()) != n):
        raise ValueError(f"train_ids must be {n} unique ids, one per training sample")
    if min(spec.l2_grid) < 0:
        raise ValueError(f"l2_grid values must be >= 0, got {list(spec.l2_grid)}")

    x = train_x.detach().to("cpu", _DTYPE).contiguous()
    y = train_y.detach().to("cpu", torch.int64).contiguous()
    test = test_x.detach().to("cpu", _DTYPE)
    if not (x.isfinite().all() and test.isfinite().all()):
        raise ValueError("features contain NaN or inf (a diverged encoder?): nothing to probe")
    ids = None if train_ids is None else train_ids.detach().to("cpu", torch.int64)
    order = _canonical_order(x, y, ids, seed)
    x, y = x[order], y[order]
    mean = x.double().mean(0)
    std = x.double().std(0)
    floor = _STD_FLOOR * float(std.mean()) if float(std.mean()) > 0 else 1.0
    std = std.clamp_min(floor)
    x = ((x - mean) / std).to(_DTYPE)
    n_classes = int(y.max()) + 1
    onehot = F.one_hot(y, n_classes).to(_DTYPE)

    fit_part, val_part = slice(n_val, None), slice(None, n_val)
    fit_axes = _principal_axes(x[fit_part])
    params = (x.new_zeros(n_classes, x.shape[1]), x.new_zeros(n_classes))
    best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
    for l2 in sorted(spec.l2_grid, reverse=True):
        weight, bias, _ = _fit(x[fit_part], onehot[fit_part], l2, spec.max_iter, fit_axes, params)
        params = (weight, bias)
        val_acc = _accuracy(x[val_part], y[val_part], weight, bias)
        if best is None or val_acc > best[0]:  # strict: ties keep the larger l2
            best = (val_acc, l2, params)
    assert best is not None
    val_acc, l2, chosen = best

    weight, bias, iterations = _fit(x, onehot, l2, spec.max_iter, _principal_axes(x), chosen)
    test = ((test - mean) / std).to(_DTYPE)
    predicted = F.linear(test, weight, bias).argmax(1)  # (M,)
    test_acc = float((predicted == test_y.detach().to("cpu", torch.int64)).double().mean())
    return ProbeResult(
        test_acc=test_acc,
        val_acc=val_acc,
        l2=l2,
        iterations=iterations,
        test_pred=predicted,
        val_size=n_val,
        val_ci=wilson_half_width(round(val_acc * n_val), n_val),
    )


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
    _check_labelled(test_x, test_y, "test")
    predicted = knn_predict(train_x, train_y, test_x, k, n_classes, chunk)
    return int((predicted == test_y.to(predicted.device, torch.int64)).sum()) / test_x.shape[0]


def knn_predict(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int, n_classes: int, chunk: int = 2048
) -> Tensor:
    """(M,) labels the weighted cosine kNN predicts for test_x (M, D) (see knn_accuracy)."""
    _check_labelled(train_x, train_y, "train")
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"knn k={k} needs 1 <= k <= {train_x.shape[0]} training samples")
    device = train_x.device
    bank = F.normalize(train_x.detach().float(), dim=1)  # (N, D)
    bank_y = train_y.detach().to(device, torch.int64)
    predicted = []
    for start in range(0, test_x.shape[0], chunk):
        query = F.normalize(test_x[start : start + chunk].detach().to(device).float(), dim=1)
        top_sim, top_idx = (query @ bank.T).topk(k, dim=1)  # (c, k)
        votes = query.new_zeros(query.shape[0], n_classes)
        votes.scatter_add_(1, bank_y[top_idx], (top_sim / _KNN_TEMPERATURE).exp())
        predicted.append(votes.argmax(1))
    return torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.int64)


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
