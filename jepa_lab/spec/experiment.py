"""Experiment specs: the single source of every setting and every default.

A spec says what an experiment *is*; it never says where it runs (data directory, tracking URI,
device come from flags and the environment), so the same file means the same thing everywhere.
All models are strict (unknown keys are errors) and frozen. Sections that have variants are tagged
unions, so an EMA strategy cannot carry a SIGReg weight.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from fractions import Fraction
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator

from jepa_lab.spec.base import FieldError, Range, Spec, as_tuple
from jepa_lab.spec.data import DataSpec

# -------------------------------------------------------------------------------------- model

PatchInit = Literal["xavier", "trunc_normal"]
PATCH_INITS: tuple[PatchInit, ...] = get_args(PatchInit)


class ModelSpec(Spec):
    """ViT encoder (no CLS token, fixed 2-D sin-cos positions) and a narrow I-JEPA predictor."""

    patch_size: int = Field(
        4,
        ge=1,
        le=64,
        description="Patch side in pixels; must divide the image size. 4 on 32 px CIFAR-10 (an "
        "8x8 grid; 16 px patches leave 4 tokens and masking is meaningless); the Fashion-MNIST "
        "recipes use 7 (4x4 grid), 3.5x faster on a CPU and better within their budget "
        "(docs/results.md).",
    )
    dim: int = Field(128, ge=8, le=4096, description="Encoder width (K).")
    depth: int = Field(4, ge=1, le=48, description="Encoder transformer blocks.")
    heads: int = Field(4, ge=1, le=64, description="Encoder attention heads; must divide dim.")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="MLP hidden width / dim.")
    pred_dim: int = Field(64, ge=8, le=4096, description="Predictor width (narrow, per I-JEPA).")
    pred_depth: int = Field(3, ge=1, le=48, description="Predictor transformer blocks.")
    pred_heads: int = Field(4, ge=1, le=64, description="Predictor heads; must divide pred_dim.")
    patch_init: PatchInit = Field(
        "xavier",
        description="Patch-embedding init. 'xavier' (as MAE) keeps image content comparable to "
        "the positional signal; 'trunc_normal' (official I-JEPA, std 0.02) makes 4x4x1 patches "
        "~10x smaller than positions, and the predictor then learns position only.",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.dim % self.heads:
            raise FieldError(f"heads ({self.heads}) must divide dim ({self.dim})", "heads", "dim")
        if self.pred_dim % self.pred_heads:
            raise FieldError(
                f"pred_heads ({self.pred_heads}) must divide pred_dim ({self.pred_dim})",
                "pred_heads",
                "pred_dim",
            )
        return self


# -------------------------------------------------------------------------------------- masks


def block_shape(scale: float, aspect: float, grid: int) -> tuple[int, int]:
    """(h, w) of a block covering ``scale`` of a ``grid`` x ``grid`` grid with h/w = ``aspect``."""
    area = scale * grid * grid
    h = round(math.sqrt(area * aspect))
    w = round(math.sqrt(area / aspect))
    return min(max(h, 1), grid), min(max(w, 1), grid)


# A bound on a positive quantity: (value, strict). Strict bounds come from rounding ties that
# Python's round sends to the neighbouring (even) integer.
_Bound = tuple[Fraction, bool]


def _side_bounds(k: int, grid: int) -> tuple[_Bound | None, _Bound | None]:
    """Bounds on (side / grid)^2 where block_shape's clamped rounding of a side gives ``k``.

    round(side) == k on [k - 0.5, k + 0.5]; ties go to the even neighbour, so the endpoints
    belong to k only when k is even. The clamp removes the lower bound of 1 and the upper bound
    of ``grid`` (None)."""
    open_ends = k % 2 == 1
    low = None if k == 1 else (Fraction(2 * k - 1, 2 * grid) ** 2, open_ends)
    high = None if k == grid else (Fraction(2 * k + 1, 2 * grid) ** 2, open_ends)
    return low, high


def _times(x: _Bound, y: Fraction | _Bound) -> _Bound:
    value, strict = y if isinstance(y, tuple) else (y, False)
    return x[0] * value, x[1] or strict


def block_reachable(
    h: int, w: int, scale: tuple[float, float], aspect: tuple[float, float], grid: int
) -> bool:
    """Whether block_shape(s, a, grid) == (h, w) for some s in ``scale`` and a in ``aspect``.

    The sides are grid * sqrt(s * a) and grid * sqrt(s / a), so (h, w) is reached iff some
    (s, a) in the box has s * a within h's bounds [pl, ph] and s / a within w's [ql, qh].
    Eliminating a (Fourier-Motzkin, multiplicatively as every bound is positive; a bound built
    from a strict one is strict) leaves bounds on s, compared squared so the square roots stay
    exact. Exact in rational arithmetic on the floats given; only where floating-point
    evaluation of block_shape lands on a rounding tie can the two differ."""
    s0, s1 = Fraction(scale[0]), Fraction(scale[1])
    a0, a1 = Fraction(aspect[0]), Fraction(aspect[1])
    pl, ph = _side_bounds(h, grid)
    ql, qh = _side_bounds(w, grid)
    # a lies in [a0, a1], [pl / s, ph / s] and [s / qh, s / ql]: each lower bound on a must lie
    # below each upper one. Bounds on s, squared: s >= s0, a0 * ql, pl / a1, sqrt(pl * ql) and
    # s <= s1, ph / a0, a1 * qh, sqrt(ph * qh) (missing bounds are 0 and infinity).
    lower: list[_Bound] = [(s0 * s0, False)]
    upper: list[_Bound] = [(s1 * s1, False)]
    if ql is not None:
        lower.append(_times(_times(ql, ql), a0 * a0))
    if pl is not None:
        lower.append(_times(_times(pl, pl), 1 / (a1 * a1)))
    if pl is not None and ql is not None:
        lower.append(_times(pl, ql))
    if ph is not None:
        upper.append(_times(_times(ph, ph), 1 / (a0 * a0)))
    if qh is not None:
        upper.append(_times(_times(qh, qh), a1 * a1))
    if ph is not None and qh is not None:
        upper.append(_times(ph, qh))
    return all(
        low < high if low_strict or high_strict else low <= high
        for low, low_strict in lower
        for high, high_strict in upper
    )


def max_target_tokens(spec: MultiBlockMaskSpec, grid: int) -> int:
    """Largest target block (in tokens) the spec's scale and aspect ranges can produce.

    Exact: integer shapes (h, w) are tested analytically (block_reachable), largest first, so no
    block is missed between sample points. Lives with the spec, not the mask sampler, so
    validating a spec needs no torch."""
    return _max_block(spec.target_scale, spec.target_aspect, grid)


@functools.lru_cache(maxsize=256)  # a study validates the same mask for every cell and bound
def _max_block(scale: tuple[float, float], aspect: tuple[float, float], grid: int) -> int:
    shapes = sorted(
        ((h, w) for h in range(1, grid + 1) for w in range(1, grid + 1)),
        key=lambda shape: -shape[0] * shape[1],
    )
    return next(h * w for h, w in shapes if block_reachable(h, w, scale, aspect, grid))


class MultiBlockMaskSpec(Spec):
    """I-JEPA multi-block masking: several target blocks, one large context block minus them."""

    scheme: Literal["multiblock"] = Field(description="Masking scheme.")
    n_targets: int = Field(4, ge=1, le=16, description="Target blocks per image (I-JEPA: 4).")
    target_scale: Range = Field(
        (0.15, 0.2), description="Area of each target block as a fraction of the grid."
    )
    target_aspect: Range = Field((0.75, 1.5), description="Aspect ratio (h/w) of target blocks.")
    context_scale: Range = Field(
        (0.85, 1.0), description="Area of the context block (aspect 1) before targets are removed."
    )
    min_context: int = Field(
        4,
        ge=1,
        description="Fewest context tokens an image keeps; where the context block minus the "
        "targets has fewer, the whole grid minus the targets is used instead.",
    )
    context: Literal["truncate", "pad"] = Field(
        "truncate",
        description="How images with different context sizes share a batch. 'truncate' (as "
        "I-JEPA) cuts every image's context to the batch minimum, which on a 4x4 grid leaves ~5 "
        "of 16 tokens; 'pad' keeps each image's own context and pads the rest with tokens that "
        "attention masks out (they never influence an output). truncate until "
        "studies/context_padding.yaml has chosen on validation.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> MultiBlockMaskSpec:
        for name in ("target_scale", "context_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise FieldError(f"{name} must lie in (0, 1]", name)
        if self.target_aspect[0] <= 0:
            raise FieldError("target_aspect must be > 0", "target_aspect")
        return self


class RandomMaskSpec(Spec):
    """Random token masking: a fixed fraction of the grid is target, the rest context."""

    scheme: Literal["random"] = Field(description="Masking scheme.")
    ratio: float = Field(0.6, gt=0, lt=1, description="Fraction of tokens to predict.")


MaskSpec = Annotated[MultiBlockMaskSpec | RandomMaskSpec, Field(discriminator="scheme")]


# --------------------------------------------------------------------------------------- loss


class LossSpec(Spec):
    """Prediction loss between predicted and target embeddings at the target positions."""

    kind: Literal["smooth_l1", "mse"] = Field("smooth_l1", description="I-JEPA uses smooth L1.")
    beta: float = Field(1.0, gt=0, le=10, description="Smooth-L1 transition point (I-JEPA: 1).")
    target_norm: bool = Field(
        True, description="Non-affine LayerNorm of target embeddings over the feature dim."
    )


# --------------------------------------------------------------------------------- strategies


class EmaSpec(Spec):
    """I-JEPA: the target encoder is an EMA copy of the context encoder; it gets no gradient."""

    kind: Literal["ema"] = Field(description="Collapse-prevention strategy.")
    momentum_start: float = Field(
        0.99,
        ge=0,
        le=1,
        description="EMA momentum at step 0, rising linearly to momentum_end. 0.99 (I-JEPA: "
        "0.996 over 300 ImageNet epochs): the target averages the last ~1/(1-m) steps, and runs "
        "of a few hundred steps need a target that moves within them.",
    )
    momentum_end: float = Field(
        0.99,
        ge=0,
        le=1,
        description="EMA momentum at the last step. 0.99, held (I-JEPA ramps to 1.0): ending at "
        "1.0 freezes the evaluated target over the end of a short run, which cost several probe "
        "points on Fashion-MNIST (docs/results.md).",
    )


class SigregSpec(Spec):
    """LeJEPA: no teacher; SIGReg pulls embeddings toward an isotropic Gaussian.

    Combined as ``(1 - lambda) * prediction + lambda * SIGReg`` (the official form; lambda values
    do not transfer to libraries that add the terms or drop SIGReg's N factor).
    """

    kind: Literal["sigreg"] = Field(description="Collapse-prevention strategy.")
    lambda_: float = Field(
        0.02,
        alias="lambda",
        ge=0,
        le=1,
        description="SIGReg weight (official: 0.02-0.05), in loss = (1 - lambda) * prediction + "
        "lambda * SIGReg. 0.02, the middle of a range the validation split could not separate "
        "(docs/results.md).",
    )
    directions: int = Field(
        64,
        ge=1,
        le=65536,
        description="Random 1-D projections, redrawn every step. 64: the statistic costs tokens x "
        "directions x knots per step, and 64 keeps the main job within its budget; 256 validate "
        "about a point higher and the Fashion-MNIST recipe uses them (docs/results.md).",
    )
    knots: int = Field(17, ge=3, le=257, description="Trapezoid knots on [0, t_max]; odd.")
    t_max: float = Field(3.0, gt=0, le=20, description="Integration limit of the statistic.")
    embeddings: Literal["target_pooled", "target_tokens", "context_pooled", "context_tokens"] = (
        Field(
            "target_tokens",
            description="Which online embeddings are regularised: the full-image pass ('target') "
            "or the context pass, mean-pooled per image or every token. Every token: pooled "
            "embeddings of a fresh ViT are nearly identical across images, and pooled SIGReg fell "
            "below random init (docs/results.md).",
        )
    )
    stop_gradient: bool = Field(
        False, description="Detach the target branch (LeJEPA itself uses no stop-gradient)."
    )
    projector: int | None = Field(
        128,
        ge=1,
        le=65536,
        description="Hidden width of an MLP head (Linear-LayerNorm-GELU-Linear back to dim) that "
        "SIGReg sees the embeddings through, as LeJEPA's projector, so the tokens the probe reads "
        "need not be Gaussian themselves; null = SIGReg on the embeddings directly. 128 validated "
        "best among none, 128 and 512 (docs/results.md).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SigregSpec:
        if self.knots % 2 == 0:
            raise FieldError(f"knots must be odd, got {self.knots}", "knots")
        if self.stop_gradient and self.embeddings.startswith("target"):
            raise FieldError(
                "stop_gradient detaches the target branch, so SIGReg on 'target_*' embeddings "
                "would get no gradient: use embeddings: context_pooled or context_tokens",
                "stop_gradient",
                "embeddings",
            )
        return self


class NoneSpec(Spec):
    """No collapse prevention: targets come from the online encoder itself (the baseline)."""

    kind: Literal["none"] = Field(description="Collapse-prevention strategy.")
    stop_gradient: bool = Field(True, description="Detach the targets (else both sides move).")


StrategySpec = Annotated[EmaSpec | SigregSpec | NoneSpec, Field(discriminator="kind")]


# -------------------------------------------------------------------------------- optimiser


class OptimSpec(Spec):
    """AdamW with linear warmup then cosine decay, and a cosine weight-decay ramp (I-JEPA)."""

    batch_size: int = Field(
        256, ge=2, le=65536, description="Global batch (split across ranks under DDP)."
    )
    epochs: float | None = Field(None, gt=0, description="Training length in epochs.")
    steps: int | None = Field(None, ge=1, description="Training length in steps (or epochs).")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate, reached after warmup.")
    lr_start: float = Field(2e-4, ge=0, le=1, description="Learning rate at step 0.")
    lr_end: float = Field(1e-6, ge=0, le=1, description="Learning rate at the last step.")
    warmup: float = Field(0.1, ge=0, lt=1, description="Warmup length, fraction of all steps.")
    weight_decay_start: float = Field(0.04, ge=0, le=10, description="Weight decay at step 0.")
    weight_decay_end: float = Field(0.4, ge=0, le=10, description="Weight decay at the end.")
    betas: Annotated[tuple[float, float], BeforeValidator(as_tuple)] = Field(
        (0.9, 0.999), description="AdamW betas."
    )
    grad_clip: float | None = Field(None, gt=0, description="Clip the grad norm; null = off.")

    @model_validator(mode="after")
    def _length(self) -> OptimSpec:
        if (self.epochs is None) == (self.steps is None):
            raise FieldError("set exactly one of optim.epochs or optim.steps", "steps", "epochs")
        if not all(0 <= b < 1 for b in self.betas):
            raise FieldError("betas must lie in [0, 1)", "betas")
        return self

    def total_steps(self, n_train: int) -> int:
        """Steps of the whole run for a training set of ``n_train`` images."""
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))


# ------------------------------------------------------------------------------- evaluation


Backend = Literal["auto", "torchao", "ao_dynamic", "onnxruntime"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


class DeploySpec(Spec):
    """The INT8 copy of the evaluation encoder: its accuracy, fidelity and latency (docs/deploy.md).

    Runs after the evaluation on a quantised *copy*; the trained model and its checkpoint are
    never touched. Latency is measured on ``tokens`` tokens fed straight to the encoder's blocks
    (a synthetic token batch), so a 128-token context is measured whatever the image size.
    """

    enabled: bool = Field(
        False,
        description="Quantise and benchmark the evaluation encoder after training. Off by "
        "default: it adds a second probe fit and a latency benchmark to every run.",
    )
    backend: Backend = Field(
        "auto",
        description="INT8 backend. 'auto' takes the fastest correct one installed: onnxruntime "
        "(dynamic int8, ~2.6x fp32 on this CPU, best tail), then ao_dynamic (~2x, deprecated "
        "torch.ao, used only while torch still ships it), then torchao; on CUDA torchao first. "
        "PT2E with inductor freezing is never offered: it gave outputs drifting from call to call.",
    )
    tokens: int = Field(
        128,
        ge=1,
        le=4096,
        description="Context length (tokens) of the latency benchmark: the design's target is a "
        "128-token context; bounded so a benchmark stays seconds long.",
    )
    batch: int = Field(
        1, ge=1, le=1024, description="Sequences per timed call (1: one request's latency)."
    )
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="CPU threads of both fp32 and INT8 while timing (the SLO is stated at 1).",
    )
    warmup: int = Field(
        10, ge=0, le=1000, description="Untimed calls per backend before each round (caches, JIT)."
    )
    iters: int = Field(
        50, ge=1, le=100000, description="Timed calls per backend and round; p99 needs ~100+ total."
    )
    rounds: int = Field(
        4,
        ge=1,
        le=1000,
        description="Rounds; fp32 and INT8 alternate round by round, so machine load drifts "
        "hit both alike.",
    )
    slo_p99_ms: float = Field(
        25.0,
        gt=0,
        le=60000,
        description="Latency objective: INT8 p99 (ms) for one call at this context (design: 25).",
    )


class EvalSpec(Spec):
    """Frozen-feature evaluation: one probe procedure for every encoder and baseline."""

    probe_train: int | None = Field(
        20000,
        ge=32,
        description="Training images whose features fit the probe (a fixed, seeded subset); "
        "null = all. The test split is always used whole.",
    )
    val_size: int = Field(
        5000,
        ge=1,
        description="Images of the probe's training subset held out as its validation split "
        "(drawn by a seeded hash of the image id, so every encoder and baseline validates on "
        "the same images): they pick the probe's L2, and their accuracy is what studies select "
        "on. 5000: the Wilson 95 % half-width at ~85 % accuracy is ~1 point, where the former "
        "1,000 images left ~2.2 points and could not separate settings 1.5 points apart.",
    )
    l2_grid: Annotated[tuple[float, ...], BeforeValidator(as_tuple)] = Field(
        (1e-5, 1e-4, 1e-3, 1e-2),
        min_length=1,
        description="L2 strengths tried for the logistic-regression probe; chosen on validation.",
    )
    max_iter: int = Field(300, ge=10, le=10000, description="L-BFGS iterations per probe fit.")
    knn_k: int = Field(20, ge=1, le=1000, description="Neighbours of the cosine kNN classifier.")
    baselines: bool = Field(True, description="Also probe a random-init encoder and raw pixels.")
    batch_size: int = Field(1024, ge=1, description="Images per feature-extraction batch.")
    every: int | None = Field(
        None,
        ge=1,
        description="Also probe the evaluation encoder every N training steps (probe accuracy "
        "against steps, logged as curve/*); null = only at the end. Each costs one probe fit.",
    )
    deploy: DeploySpec = Field(
        default_factory=DeploySpec, description="INT8 copy of the encoder: accuracy and latency."
    )

    @model_validator(mode="after")
    def _split(self) -> EvalSpec:
        if self.probe_train is not None and self.val_size >= self.probe_train:
            raise FieldError(
                f"val_size {self.val_size} leaves no image of probe_train {self.probe_train} to "
                "fit the probe on: lower eval.val_size or raise eval.probe_train",
                "val_size",
                "probe_train",
            )
        return self


# ------------------------------------------------------------------------------- experiment


class ExperimentSpec(Spec):
    """One JEPA pre-training run followed by its evaluation."""

    name: str = Field(
        "experiment", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Short identifier."
    )
    data: DataSpec = Field(description="Dataset and augmentation.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Encoder and predictor.")
    mask: MaskSpec = Field(
        default_factory=lambda: MultiBlockMaskSpec(scheme="multiblock"),
        description="Which tokens are context and which are predicted.",
    )
    loss: LossSpec = Field(default_factory=LossSpec, description="Prediction loss.")
    strategy: StrategySpec = Field(description="Collapse prevention: ema, sigreg or none.")
    optim: OptimSpec = Field(description="Optimiser, schedules and training length.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Probe and diagnostics.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of weights, data order and masks.")
    log_every: int = Field(50, ge=1, description="Steps between logged training metrics.")

    @model_validator(mode="after")
    def _geometry(self) -> ExperimentSpec:
        size, patch = self.data.image_size, self.model.patch_size
        if size % patch:
            raise FieldError(
                f"model.patch_size {patch} does not divide the image size {size} of "
                f"{self.data.name}: pick a divisor of {size}",
                "model.patch_size",
                "data.image_size",
                "data.name",
            )
        grid = size // patch
        tokens = grid * grid
        if tokens < 4:
            raise FieldError(
                f"patch_size {patch} leaves {tokens} tokens: use a smaller patch",
                "model.patch_size",
                "data.image_size",
            )
        if isinstance(self.mask, MultiBlockMaskSpec):
            largest = max_target_tokens(self.mask, grid)
            if largest > tokens - self.mask.min_context:
                raise FieldError(
                    f"mask: a target block can cover {largest} of the {tokens} tokens of the "
                    f"{grid}x{grid} grid, leaving fewer than min_context={self.mask.min_context} "
                    "context tokens: lower mask.target_scale or mask.min_context",
                    "mask.target_scale",
                    "mask.min_context",
                    "mask.target_aspect",
                    "model.patch_size",
                    "data.image_size",
                )
        else:
            n_target = round(self.mask.ratio * tokens)
            if not 1 <= n_target <= tokens - 1:
                raise FieldError(
                    f"mask.ratio {self.mask.ratio} on a {grid}x{grid} grid predicts {n_target} "
                    f"of {tokens} tokens: it must leave at least one target and one context token",
                    "mask.ratio",
                    "model.patch_size",
                    "data.image_size",
                )
        return self

    @model_validator(mode="after")
    def _padding(self) -> ExperimentSpec:
        padded = isinstance(self.mask, MultiBlockMaskSpec) and self.mask.context == "pad"
        strategy = self.strategy
        on_context = isinstance(strategy, SigregSpec) and strategy.embeddings.startswith("context")
        if padded and on_context:
            # SIGReg would see the padded entries' meaningless rows as embeddings.
            raise FieldError(
                "mask.context: pad leaves padding rows in the context pass, which SIGReg on "
                "'context_*' embeddings would regularise: use strategy.embeddings: target_tokens "
                "or target_pooled, or mask.context: truncate",
                "mask.context",
                "strategy.embeddings",
            )
        return self

    @property
    def grid(self) -> int:
        return self.data.image_size // self.model.patch_size

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (aliases as written in YAML)."""
        return self.model_dump(mode="json", by_alias=True)

    def digest(self, *, with_seed: bool = True) -> str:
        """Stable 12-hex hash of the resolved spec; without the seed it is the ``config_id``."""
        data = self.to_dict()
        # A disabled deploy section changes no number a run reports, so it stays out of the
        # digest: specs and checkpoints written before it existed keep their identity.
        if not self.eval.deploy.enabled:
            data["eval"].pop("deploy")
        if not with_seed:
            data.pop("seed")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


# Sections that are tagged unions, with their tag key: setting the tag through an override
# replaces the whole section with that variant's defaults (see specfile.apply_overrides).
UNION_TAGS = {"data": "name", "mask": "scheme", "strategy": "kind"}
