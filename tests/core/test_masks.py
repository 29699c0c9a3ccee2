"""Masks: counts, disjointness, determinism, coverage and termination on small grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jepa_lab.core.masks import sample_masks
from jepa_lab.spec.experiment import (
    MultiBlockMaskSpec,
    RandomMaskSpec,
    block_reachable,
    block_shape,
    max_target_tokens,
)

MULTIBLOCK = MultiBlockMaskSpec(scheme="multiblock")


@pytest.mark.parametrize("grid", [4, 7, 8, 14])
def test_multiblock_shapes_and_disjointness(grid: int) -> None:
    spec = MULTIBLOCK
    for seed in range(50):
        masks = sample_masks(spec, grid, 32, seed)
        batch, blocks, _ = masks.targets.shape
        assert (batch, blocks) == (32, spec.n_targets) and masks.context.shape[0] == 32
        assert masks.context.shape[1] >= spec.min_context
        for row in range(batch):
            context = set(masks.context[row].tolist())
            targets = set(masks.targets[row].flatten().tolist())
            assert len(context) == masks.context.shape[1]  # no repeated context token
            assert not context & targets
            assert max(context | targets) < grid * grid


def test_target_blocks_are_rectangles_of_the_drawn_size() -> None:
    masks = sample_masks(MULTIBLOCK, 8, 16, seed=3)
    n_target = masks.targets.shape[2]
    for block in masks.targets.reshape(-1, n_target):
        rows, cols = block // 8, block % 8
        height = int(rows.max() - rows.min() + 1)
        width = int(cols.max() - cols.min() + 1)
        assert height * width == n_target


def test_blocks_reach_every_cell_of_the_grid() -> None:
    """The official sampler never masks the last row/column; ours must cover the whole grid."""
    seen = torch.zeros(49, dtype=torch.bool)
    for seed in range(30):
        seen[sample_masks(MULTIBLOCK, 7, 64, seed).targets.flatten()] = True
    assert bool(seen.all())


def test_masks_are_a_pure_function_of_the_seed() -> None:
    first, again = sample_masks(MULTIBLOCK, 7, 8, 11), sample_masks(MULTIBLOCK, 7, 8, 11)
    other = sample_masks(MULTIBLOCK, 7, 8, 12)
    assert torch.equal(first.context, again.context) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.targets, other.targets)


def test_a_rank_shard_is_the_rows_of_the_global_draw() -> None:
    masks = sample_masks(MULTIBLOCK, 7, 8, 5)
    half = masks.rows(4, 8)
    assert torch.equal(half.targets, masks.targets[4:]) and torch.equal(
        half.context, masks.context[4:]
    )


def test_blocks_tiling_the_grid_still_leave_min_context() -> None:
    """Six blocks of up to 6 tokens can tile a 4x4 grid: sampling must neither loop nor starve."""
    spec = MultiBlockMaskSpec(
        scheme="multiblock", n_targets=6, target_scale=(0.25, 0.35), min_context=3
    )
    assert max_target_tokens(spec, 4) <= 16 - 3
    for seed in range(200):
        masks = sample_masks(spec, 4, 16, seed)
        assert masks.context.shape[1] >= 3
        for row in range(16):
            assert not set(masks.context[row].tolist()) & set(masks.targets[row].flatten().tolist())


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_random_masks_split_the_grid(ratio: float) -> None:
    masks = sample_masks(RandomMaskSpec(scheme="random", ratio=ratio), 8, 16, 0)
    assert masks.targets.shape == (16, 1, round(ratio * 64))
    assert masks.context.shape == (16, 64 - round(ratio * 64))
    both = torch.cat([masks.context, masks.targets[:, 0]], dim=1).sort(dim=1).values
    assert torch.equal(both, torch.arange(64).expand(16, -1))


def test_block_shape_is_clamped_to_the_grid() -> None:
    assert block_shape(1.0, 4.0, 7) == (7, 4)
    assert block_shape(0.01, 1.0, 7) == (1, 1)


def _sampled_shapes(
    scale: tuple[float, float], aspect: tuple[float, float], grid: int, n: int = 1201
) -> set[tuple[int, int]]:
    """Brute force: block_shape's (h, w) on an n x n log-spaced lattice of (scale, aspect).

    numpy rounds ties to even, as Python's round does, so this is block_shape vectorised."""
    s = np.geomspace(*scale, n)[:, None]
    a = np.geomspace(*aspect, n)[None, :]
    area = s * grid * grid
    h = np.clip(np.round(np.sqrt(area * a)), 1, grid).astype(int)
    w = np.clip(np.round(np.sqrt(area / a)), 1, grid).astype(int)
    codes = np.unique(h * (grid + 1) + w)
    return {(int(code) // (grid + 1), int(code) % (grid + 1)) for code in codes}


def _reachable(
    scale: tuple[float, float], aspect: tuple[float, float], grid: int
) -> set[tuple[int, int]]:
    return {
        (h, w)
        for h in range(1, grid + 1)
        for w in range(1, grid + 1)
        if block_reachable(h, w, scale, aspect, grid)
    }


def test_max_target_tokens_finds_the_block_a_coarse_lattice_missed() -> None:
    """Grid 7, scale 0.1 to 0.6, aspect 0.3 to 3: a 7x5 block (35 tokens) is reachable; the old
    33x33 lattice of (scale, aspect) saw at most 30."""
    spec = MultiBlockMaskSpec(
        scheme="multiblock", target_scale=(0.1, 0.6), target_aspect=(0.3, 3.0)
    )
    assert max_target_tokens(spec, 7) == 35
    assert block_reachable(7, 5, (0.1, 0.6), (0.3, 3.0), 7)
    assert block_shape(0.6, 1.45, 7) == (7, 5)


def test_exact_block_set_matches_a_brute_force_over_scale_and_aspect() -> None:
    rng = np.random.default_rng(0)
    cases: list[tuple[int, tuple[float, float], tuple[float, float]]] = [
        (7, (0.1, 0.6), (0.3, 3.0)),
        (4, (0.15, 0.2), (0.75, 1.5)),
        (8, (0.15, 0.2), (0.75, 1.5)),
        (14, (0.15, 0.2), (0.75, 1.5)),
        (4, (0.25, 0.35), (0.75, 1.5)),
        (5, (0.01, 1.0), (0.1, 10.0)),
    ]
    for _ in range(40):
        grid = int(rng.integers(2, 17))
        s = np.sort(rng.uniform(0.01, 1.0, 2))
        a = np.sort(np.exp(rng.uniform(np.log(0.2), np.log(5.0), 2)))
        cases.append((grid, (float(s[0]), float(s[1])), (float(a[0]), float(a[1]))))
    for grid, scale, aspect in cases:
        exact, sampled = _reachable(scale, aspect, grid), _sampled_shapes(scale, aspect, grid)
        assert exact == sampled, (grid, scale, aspect, exact ^ sampled)
        spec = MultiBlockMaskSpec(scheme="multiblock", target_scale=scale, target_aspect=aspect)
        assert max_target_tokens(spec, grid) == max(h * w for h, w in sampled)


def test_a_degenerate_range_gives_block_shapes_own_block() -> None:
    # (5, 0.25, 1.0) is a rounding tie: both sides are exactly 2.5, which rounds to 2.
    ties = [(5, 0.25, 1.0), (7, 0.25, 1.0)]
    for grid, s, a in [(7, 0.2, 1.0), (8, 0.15, 0.75), (14, 0.37, 2.2), (5, 0.3, 0.5), *ties]:
        spec = MultiBlockMaskSpec(scheme="multiblock", target_scale=(s, s), target_aspect=(a, a))
        h, w = block_shape(s, a, grid)
        assert max_target_tokens(spec, grid) == h * w
