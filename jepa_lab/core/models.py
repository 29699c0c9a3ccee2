"""ViT encoder and I-JEPA predictor, built from timm's patch embedding and transformer blocks.

As in the official I-JEPA code (Assran et al. 2023, arXiv:2301.08243): no CLS token, fixed 2-D
sin-cos positions, a final LayerNorm; the encoder embeds every patch, adds positions and only then
keeps the requested tokens, so its cost scales with the tokens kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from timm.layers import PatchEmbed, build_sincos2d_pos_embed, trunc_normal_
from timm.models.vision_transformer import Attention, Block
from torch import nn

from jepa_lab.core.masks import Masks
from jepa_lab.spec.experiment import ModelSpec


def _positions(grid: int, dim: int) -> torch.Tensor:
    """(1, grid*grid, dim) fixed 2-D sin-cos positional embedding, row-major token order."""
    return build_sincos2d_pos_embed([grid, grid], dim=dim).reshape(1, grid * grid, dim)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Tokens of ``x`` (B, N, D) at ``index`` (B, n) -> (B, n, D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def key_mask(padding: torch.Tensor | None) -> torch.Tensor | None:
    """Attention mask (B, 1, 1, n) from ``padding`` (B, n), True where a key may be attended to.

    Broadcast over heads and queries: padded keys get no attention weight, so they cannot
    influence any output (their own rows are computed but never read). None stays None, which
    keeps the unpadded path exactly the unmasked attention.
    """
    return None if padding is None else ~padding[:, None, None, :]


def match_attention(modules: Iterable[nn.Module], precision: str, device: torch.device) -> None:
    """Pick the attention kernel of every timm attention layer among ``modules`` (a model's or
    a strategy's ``.modules()``) for the step.

    On a CPU under bf16 autocast, torch's fused (flash) attention is slower than in fp32: its
    backward took 867 ms of a 1.9 s SIGReg step against 82 ms in fp32 (bench/profile_step.py).
    There the explicit softmax(q k^T) v runs its two matmuls in bf16 and is 2x faster than fp32 per
    block, so bf16 on CPUs uses it. Everywhere else (fp32, CUDA) the fused kernel stays, so fp32
    numerics are exactly as before.
    """
    fused = not (precision == "bf16" and device.type == "cpu")
    for module in modules:
        if isinstance(module, Attention):
            # timm marks it Final for TorchScript; eager forward reads it at every call
            module.fused_attn = fused  # type: ignore[misc]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    blocks = nn.ModuleList(
        Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)
    )
    blocks.apply(_init_weights)
    # I-JEPA's residual rescaling: deeper blocks start with smaller output projections.
    for layer, block in enumerate(blocks, start=1):
        assert isinstance(block, Block)
        for linear in (block.attn.proj, block.mlp.fc2):
            assert isinstance(linear, nn.Linear)
            linear.weight.data.div_(math.sqrt(2.0 * layer))
    return blocks


class Encoder(nn.Module):
    """ViT: images (B, C, H, W) -> tokens (B, n, K), optionally only at ``keep`` (B, n)."""

    pos: torch.Tensor

    def __init__(self, spec: ModelSpec, image_size: int, channels: int) -> None:
        super().__init__()
        grid = image_size // spec.patch_size
        self.dim = spec.dim
        self.patch_embed = PatchEmbed(image_size, spec.patch_size, channels, spec.dim)
        self.register_buffer("pos", _positions(grid, spec.dim), persistent=False)
        self.blocks = _blocks(spec.dim, spec.depth, spec.heads, spec.mlp_ratio)
        self.norm = nn.LayerNorm(spec.dim)
        _init_weights(self.norm)
        weight = self.patch_embed.proj.weight
        if spec.patch_init == "xavier":
            # Xavier on the flattened kernel, as MAE: content is then not dwarfed by positions.
            nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        else:
            trunc_normal_(weight, std=0.02)
        assert self.patch_embed.proj.bias is not None
        nn.init.zeros_(self.patch_embed.proj.bias)

    def forward(
        self,
        images: torch.Tensor,
        keep: torch.Tensor | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``keep`` (B, n) token indices; ``padding`` (B, n) True where an entry of ``keep`` is
        padding that attention must ignore (its output row is meaningless)."""
        x = self.patch_embed(images) + self.pos
        if keep is not None:
            x = gather_tokens(x, keep)
        mask = key_mask(padding)
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.norm(x)


class Predictor(nn.Module):
    """Narrow ViT predicting target-token embeddings from context tokens and target positions."""

    pos: torch.Tensor

    def __init__(self, spec: ModelSpec, grid: int) -> None:
        super().__init__()
        self.embed = nn.Linear(spec.dim, spec.pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, spec.pred_dim))
        self.register_buffer("pos", _positions(grid, spec.pred_dim), persistent=False)
        self.blocks = _blocks(spec.pred_dim, spec.pred_depth, spec.pred_heads, spec.mlp_ratio)
        self.norm = nn.LayerNorm(spec.pred_dim)
        self.out = nn.Linear(spec.pred_dim, spec.dim)
        for module in (self.embed, self.norm, self.out):
            _init_weights(module)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, masks: Masks) -> torch.Tensor:
        """context (B, Nc, K) -> predictions (B, T, Nt, K) for each of the T target blocks."""
        batch, blocks, n_target = masks.targets.shape
        pos = self.pos.expand(batch * blocks, -1, -1)
        x = self.embed(context) + gather_tokens(pos[:batch], masks.context)
        x = x.repeat_interleave(blocks, dim=0)  # (B*T, Nc, P): one sequence per target block
        queries = self.mask_token + gather_tokens(pos, masks.targets.flatten(0, 1))
        x = torch.cat([x, queries], dim=1)
        mask = None
        if masks.padding is not None:  # padded context keys are ignored; queries never are
            padding = masks.padding.repeat_interleave(blocks, dim=0)
            mask = key_mask(torch.cat([padding, padding.new_zeros(len(padding), n_target)], 1))
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        out = self.out(self.norm(x[:, -n_target:]))
        return out.view(batch, blocks, n_target, -1)


def projector_head(dim: int, hidden: int) -> nn.Sequential:
    """MLP head dim -> hidden -> dim (Linear-LayerNorm-GELU-Linear) a regulariser looks through.

    LayerNorm rather than LeJEPA's BatchNorm: no running statistics, so ranks never disagree.
    """
    head = nn.Sequential(
        nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim)
    )
    head.apply(_init_weights)
    return head


class JEPA(nn.Module):
    """The trained modules (context encoder, predictor and an optional projector head), in one
    module so DDP wraps and synchronises them all."""

    projector: nn.Module | None

    def __init__(
        self, spec: ModelSpec, image_size: int, channels: int, projector: int | None = None
    ) -> None:
        super().__init__()
        self.encoder = Encoder(spec, image_size, channels)
        self.predictor = Predictor(spec, image_size // spec.patch_size)
        # Built last, so the encoder and predictor draw the same weights with or without it.
        self.projector = None if projector is None else projector_head(spec.dim, projector)

    def forward(
        self, images: torch.Tensor, masks: Masks, full_pass: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Predictions (B, T, Nt, K), context tokens (B, Nc, K), full-image tokens (B, N, K).

        With ``masks.padding``, the context rows at padded entries are meaningless."""
        context = self.encoder(images, masks.context, masks.padding)
        predictions = self.predictor(context, masks)
        full = self.encoder(images) if full_pass else None
        return predictions, context, full


def build_model(
    spec: ModelSpec, image_size: int, channels: int, seed: int, projector: int | None = None
) -> JEPA:
    """A freshly initialised JEPA (with a projector head of that hidden width, if given); weights
    are a pure function of ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return JEPA(spec, image_size, channels, projector)
