"""Context/target token masks: I-JEPA multi-block and random masking.

Every draw is a pure function of a seed and the *global* batch: under DDP each rank slices its
rows of the same global draw, so N ranks x B/N see exactly the masks of 1 rank x B. Masks are
drawn with vectorised torch ops on the host: their lengths (the shapes of the step) depend on the
draw, and reading a length back from an accelerator would stall the host every step. Only the
small index tensors travel to the device.

Fixes over the official sampler (Assran et al. 2023, arXiv:2301.08243): scale and aspect come from
independent draws, a block can sit anywhere on the grid (the last row and column included), and
sampling never loops: when the context block minus the targets keeps too few tokens, the whole
grid minus the targets is used, and when even that is too small (blocks tiling the grid), the
image keeps a single target block, which the spec validation guarantees leaves enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from jepa_lab.spec.experiment import MaskSpec, MultiBlockMaskSpec, block_shape


@dataclass(frozen=True)
class Masks:
    """Token indices into the flattened (row-major) patch grid.

    context: (B, Nc) indices the context encoder sees.
    targets: (B, T, Nt) indices of T target blocks to predict, Nt tokens each.
    padding: (B, Nc) bool, True where a context entry is padding (``mask.context: pad``): its
        index is a valid token but attention must ignore it. None when every entry is real.
    """

    context: torch.Tensor
    targets: torch.Tensor
    padding: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Masks:
        padding = None if self.padding is None else fn(self.padding)
        return Masks(fn(self.context), fn(self.targets), padding)

    def to(self, device: torch.device | str) -> Masks:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Masks:
        return self._map(lambda t: t.pin_memory())

    def rows(self, start: int, stop: int) -> Masks:
        """The masks of batch rows ``start:stop`` (a rank's shard of the global batch)."""
        return self._map(lambda t: t[start:stop])

    def context_counts(self) -> torch.Tensor:
        """(B,) real (unpadded) context tokens of each image."""
        if self.padding is None:
            return torch.full(self.context.shape[:1], self.context.shape[1], dtype=torch.int64)
        return (~self.padding).sum(1)

    def target_counts(self, tokens: int) -> torch.Tensor:
        """(B,) distinct tokens covered by an image's target blocks (overlaps counted once)."""
        return _covered(self.targets.cpu(), tokens).sum(1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _block_indices(
    top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: int
) -> torch.Tensor:
    """Flat indices (B, h*w) of h x w blocks whose corners are ``top``/``left`` (B,)."""
    rows = top[:, None] + torch.arange(h)[None, :]
    cols = left[:, None] + torch.arange(w)[None, :]
    return (rows[:, :, None] * grid + cols[:, None, :]).reshape(top.shape[0], h * w)


def _random_corner(
    batch: int, h: int, w: int, grid: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.randint(0, grid - h + 1, (batch,), generator=generator)
    left = torch.randint(0, grid - w + 1, (batch,), generator=generator)
    return top, left


def _covered(targets: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, N) True where any of the target blocks (B, T, n) lies."""
    covered = torch.zeros(targets.shape[0], tokens, dtype=torch.bool)
    return covered.scatter_(1, targets.flatten(1), True)


def _pick(allowed: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct random indices (sorted) among the True entries of ``allowed`` (B, N)."""
    scores = torch.rand(allowed.shape, generator=generator).masked_fill(~allowed, -1.0)
    return scores.topk(count, dim=1).indices.sort(dim=1).values


def sample_multiblock(
    spec: MultiBlockMaskSpec, grid: int, batch: int, generator: torch.Generator
) -> Masks:
    """I-JEPA multi-block masks for a batch; block sizes once per batch, positions per image.

    ``spec.context`` 'truncate' cuts every image's context to the batch minimum; 'pad' keeps each
    image's own and marks the entries beyond it in ``Masks.padding``. Both consume the generator
    identically, so the two differ only in the entries kept."""
    tokens = grid * grid
    h, w = block_shape(
        _uniform(generator, *spec.target_scale), _uniform(generator, *spec.target_aspect), grid
    )
    targets = torch.stack(
        [
            _block_indices(*_random_corner(batch, h, w, grid, generator), h, w, grid)
            for _ in range(spec.n_targets)
        ],
        dim=1,
    )  # (B, T, h*w)
    covered = _covered(targets, tokens)
    # Rarely the blocks tile nearly the whole grid; such rows keep only their first block (T
    # copies of it), which the spec validation guarantees leaves min_context tokens free.
    crowded = (tokens - covered.sum(1)) < spec.min_context
    targets = torch.where(crowded[:, None, None], targets[:, :1].expand_as(targets), targets)
    covered = torch.where(crowded[:, None], _covered(targets, tokens), covered)

    ch, cw = block_shape(_uniform(generator, *spec.context_scale), 1.0, grid)
    in_block = torch.zeros(batch, tokens, dtype=torch.bool)
    corner = _random_corner(batch, ch, cw, grid, generator)
    in_block.scatter_(1, _block_indices(*corner, ch, cw, grid), True)
    allowed = in_block & ~covered
    short = allowed.sum(1) < spec.min_context
    allowed = torch.where(short[:, None], ~covered, allowed)
    counts = allowed.sum(1)  # host tensor: no device sync
    if spec.context == "truncate":
        return Masks(_pick(allowed, int(counts.min()), generator), targets)
    context = _pick(allowed, int(counts.max()), generator)
    # _pick ranks allowed tokens first, so a row's real tokens are its allowed picks.
    return Masks(context, targets, ~allowed.gather(1, context))


def sample_random(ratio: float, grid: int, batch: int, generator: torch.Generator) -> Masks:
    """A random ``ratio`` of each image's tokens is target (one block), the rest context."""
    tokens = grid * grid
    n_target = round(ratio * tokens)
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    targets = order[:, :n_target].sort(dim=1).values
    context = order[:, n_target:].sort(dim=1).values
    return Masks(context, targets[:, None, :])


def sample_masks(spec: MaskSpec, grid: int, batch: int, seed: int) -> Masks:
    """Masks for one global batch, a pure function of ``seed`` (derive it from run seed + step)."""
    generator = torch.Generator().manual_seed(seed)
    if spec.scheme == "multiblock":
        return sample_multiblock(spec, grid, batch, generator)
    return sample_random(spec.ratio, grid, batch, generator)
