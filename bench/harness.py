"""The training steps that throughput.py and profile_step.py run, built in one place.

``ours`` is the trainer's own step: ``global_batch`` (batch, augmentation, masks) then
``train_step`` (context/target forwards, backward, AdamW, strategy update). ``lightly`` is the same
I-JEPA step built from lightly 1.6's timm modules: ``MaskedVisionTransformerTIMM`` (context and
EMA target encoders), ``IJEPAPredictorTIMM``, ``lightly.models.utils.apply_masks`` and
``update_momentum``. It gets the spec's shapes, the very images and masks of ``global_batch``, the
same loss (smooth L1 on non-affine-LayerNormed targets, in fp32), the same AdamW parameter groups
and the same EMA momentum schedule, so the two differ only in how the model code is written.

Index conventions that keep the peer fair:

- Our masks index the row-major patch grid with no CLS token. The peer's timm ViT is built with
  ``class_token=False``, so lightly's ``idx_keep`` / ``apply_masks`` indices are patch indices as
  well. With a CLS token they would index the sequence that includes it (index i = patch i-1).
- ``global_pool=""``: with ``"avg"`` timm moves the encoder's final LayerNorm into ``fc_norm``,
  which ``encode`` never applies, and the peer would skip a LayerNorm that ours runs.
- lightly takes target blocks as a list of T (B, Nt) index tensors and returns predictions and
  targets as (T*B, Nt, K), block-major; ours keeps (B, T, Nt, K). Same tokens, same work.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import cast

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from jepa_lab.core.models import match_attention
from jepa_lab.core.strategies import build_training
from jepa_lab.core.strategies.ema import momentum_at
from jepa_lab.data.datasets import Dataset
from jepa_lab.spec.experiment import EmaSpec, ExperimentSpec, ModelSpec
from jepa_lab.spec.load import SpecError, load
from jepa_lab.training.distributed import pick_device
from jepa_lab.training.loop import global_batch, train_step
from jepa_lab.training.optim import build_optimizer

Step = Callable[[int], None]  # runs the training step of global step ``index``
IMPLS = ("ours", "lightly")
PEER_MODULES = ("lightly.models.modules", "lightly.models.utils")


class BenchError(Exception):
    """A bad option, spec or missing peer: one line each, printed before anything runs."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = messages


@dataclass(frozen=True)
class Setup:
    """How steps run on this machine: never what they compute."""

    device: torch.device
    dtype: str  # "bf16" (autocast) or "fp32"; CUDA always runs bf16, as train_step does
    compile: bool
    data_dir: str | None


def add_options(parser: argparse.ArgumentParser) -> None:
    """The machine options both scripts take."""
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 on CUDA (always), fp32 elsewhere")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    parser.add_argument("--batch-size", type=int, default=None, help="override the spec's batch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--data-dir", default=os.environ.get("JEPA_LAB_DATA"))


def configure(args: argparse.Namespace, paths: list[str]) -> tuple[Setup, list[ExperimentSpec]]:
    """Resolve the machine options (sets the thread count) and load the specs."""
    device = pick_device(args.device)
    # CUDA is measured in bf16 only (fp32 there is not a setting anyone trains with here); on
    # other devices fp32 is the default so that a bf16 window is always asked for by name.
    native = "bf16" if device.type == "cuda" else "fp32"
    dtype = args.dtype or native
    if device.type == "cuda" and dtype != "bf16":
        raise BenchError("--dtype fp32 on cuda: train_step always autocasts to bf16 there")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    overrides = [f"optim.batch_size={args.batch_size}"] if args.batch_size else []
    try:
        specs = [load(ExperimentSpec, path, overrides) for path in paths]
    except SpecError as exc:
        raise BenchError(*exc.messages) from exc
    return Setup(device, dtype, args.compile, args.data_dir), specs


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def require_peer(impl: str) -> str:
    """The peer's version; a one-line BenchError when it is not importable."""
    if impl != "lightly":
        raise BenchError(f"unknown peer {impl!r}: choose from {IMPLS[1:]}")
    try:
        for name in PEER_MODULES:
            import_module(name)
    except ImportError as exc:
        raise BenchError(
            f"the lightly peer needs lightly 1.6 ({exc}): pip install 'jepa-lab[bench]'"
        ) from exc
    return str(import_module("lightly").__version__)


def peer_unsupported(spec: ExperimentSpec) -> str | None:
    """Why lightly's I-JEPA step cannot run ``spec``'s objective (None when it can)."""
    if not isinstance(spec.strategy, EmaSpec):
        return f"lightly's I-JEPA step is the EMA strategy, not {spec.strategy.kind}"
    if spec.loss.kind != "smooth_l1" or not spec.loss.target_norm:
        return "lightly's I-JEPA loss is smooth L1 on LayerNormed targets"
    return None


def _compiled(model: nn.Module, setup: Setup) -> nn.Module:
    """The trained module as the step calls it: compiled or eager (the weights are shared)."""
    return cast(nn.Module, torch.compile(model)) if setup.compile else model


def build_step(impl: str, spec: ExperimentSpec, data: Dataset, setup: Setup) -> Step:
    """The training step of ``impl`` ("ours" or "lightly") for ``spec``, on ``data``'s device."""
    if impl == "ours":
        return _our_step(spec, data, setup)
    return _lightly_step(spec, data, setup)


def _our_step(spec: ExperimentSpec, data: Dataset, setup: Setup) -> Step:
    device = setup.device
    total = spec.optim.total_steps(len(data.train_labels))
    model, strategy = build_training(spec, total)
    model, strategy = model.to(device), strategy.to(device)
    precision = "bf16" if device.type == "cuda" else setup.dtype
    match_attention(model.modules(), precision, device)
    match_attention(strategy.modules(), precision, device)
    optimizer = build_optimizer(model, spec.optim, fused=device.type == "cuda")
    trained = _compiled(model, setup)

    def step(index: int) -> None:  # the training step's own autocast, at the resolved precision
        images, masks = global_batch(spec, data, index, device)
        train_step(trained, strategy, optimizer, images, masks, spec.loss, index, None, precision)

    return step


class LightlyIJEPA(nn.Module):
    """What lightly's I-JEPA trains, at ``spec``'s shapes: timm context encoder and predictor."""

    def __init__(self, spec: ModelSpec, image_size: int, channels: int) -> None:
        from lightly.models.modules import IJEPAPredictorTIMM, MaskedVisionTransformerTIMM

        super().__init__()
        grid = image_size // spec.patch_size
        vit = VisionTransformer(
            img_size=image_size, patch_size=spec.patch_size, in_chans=channels, num_classes=0,
            embed_dim=spec.dim, depth=spec.depth, num_heads=spec.heads,
            mlp_ratio=spec.mlp_ratio, qkv_bias=True, class_token=False, global_pool="",
        )  # fmt: skip
        self.encoder = MaskedVisionTransformerTIMM(vit=vit)  # fixed sin-cos positions
        self.predictor = IJEPAPredictorTIMM(
            num_patches=grid * grid, depth=spec.pred_depth, mlp_dim=spec.dim,
            predictor_embed_dim=spec.pred_dim, num_heads=spec.pred_heads,
            mlp_ratio=spec.mlp_ratio,
        )  # fmt: skip

    def forward(
        self, images: torch.Tensor, context: torch.Tensor, targets: list[torch.Tensor]
    ) -> torch.Tensor:
        """images (B, C, H, W), context (B, Nc), T targets (B, Nt) -> predictions (T*B, Nt, K)."""
        return self.predictor(self.encoder.encode(images, idx_keep=context), context, targets)


def _lightly_step(spec: ExperimentSpec, data: Dataset, setup: Setup) -> Step:
    from lightly.models.utils import apply_masks, update_momentum

    ema = spec.strategy
    assert isinstance(ema, EmaSpec), peer_unsupported(spec)
    device = setup.device
    total = spec.optim.total_steps(len(data.train_labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LightlyIJEPA(spec.model, spec.data.image_size, spec.data.channels).to(device)
    target = copy.deepcopy(model.encoder).requires_grad_(False)
    optimizer = build_optimizer(model, spec.optim, fused=device.type == "cuda")
    trained = _compiled(model, setup)

    def step(index: int) -> None:
        images, masks = global_batch(spec, data, index, device)
        targets = list(masks.targets.unbind(1))  # lightly: one (B, Nt) index tensor per block
        with torch.autocast(device.type, torch.bfloat16, enabled=setup.dtype == "bf16"):
            predictions = trained(images, masks.context, targets)
            with torch.no_grad():
                tokens = target.encode(images).float()
                wanted = apply_masks(F.layer_norm(tokens, tokens.shape[-1:]), targets)
            loss = F.smooth_l1_loss(predictions.float(), wanted, beta=spec.loss.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_momentum(model.encoder, target, momentum_at(ema, index, total))

    return step
