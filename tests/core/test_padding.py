"""mask.context: pad keeps each image's own context; padded entries never influence an output,
and the default 'truncate' draws exactly the masks it drew before the option existed."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from jepa_lab.core.masks import Masks, sample_masks
from jepa_lab.core.models import build_model
from jepa_lab.spec.experiment import ExperimentSpec, ModelSpec, MultiBlockMaskSpec

TRUNCATE = MultiBlockMaskSpec(scheme="multiblock")
PAD = MultiBlockMaskSpec(scheme="multiblock", context="pad")
SMALL = ModelSpec(patch_size=4, dim=32, depth=2, heads=2, pred_dim=16, pred_depth=2, pred_heads=2)


def _checksum(masks: Masks) -> tuple[tuple[int, ...], int, int]:
    weights = torch.arange(1, masks.context.shape[1] + 1)
    context = int((masks.context * weights).sum())
    return tuple(masks.context.shape), context, int(masks.targets.sum())


def test_truncate_draws_the_masks_it_drew_before_padding_existed() -> None:
    # Checksums of the sampler as of commit 3f0b375 (before mask.context), 4x4 grid, batch 64.
    before = [
        ((64, 8), 22663, 3920),
        ((64, 4), 6030, 7428),
        ((64, 4), 5926, 7800),
        ((64, 8), 22678, 3742),
        ((64, 4), 5894, 7792),
    ]
    for seed, expected in enumerate(before):
        masks = sample_masks(TRUNCATE, 4, 64, seed)
        assert masks.padding is None and _checksum(masks) == expected


@pytest.mark.parametrize("grid", [4, 7])
def test_pad_keeps_every_allowed_context_token(grid: int) -> None:
    for seed in range(20):
        cut, padded = sample_masks(TRUNCATE, grid, 32, seed), sample_masks(PAD, grid, 32, seed)
        assert torch.equal(cut.targets, padded.targets)  # same draw, only the context differs
        assert padded.padding is not None
        counts = padded.context_counts()
        assert int(counts.min()) == cut.context.shape[1] >= PAD.min_context
        assert int(counts.max()) == padded.context.shape[1]
        for row in range(32):
            real = set(padded.context[row][~padded.padding[row]].tolist())
            assert len(real) == int(counts[row])
            assert set(cut.context[row].tolist()) <= real  # truncation keeps a subset
            assert not real & set(padded.targets[row].flatten().tolist())


def test_padded_entries_never_influence_predictions() -> None:
    model = build_model(SMALL, 16, 1, seed=0).eval()
    images = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = next(
        m
        for s in range(100)
        if bool((m := sample_masks(PAD, 4, 16, s)).padding.any())  # type: ignore[union-attr]
    )
    assert masks.padding is not None
    with torch.no_grad():
        predictions = model(images, masks, full_pass=False)[0]
        # Point every padded entry at another token: its content changes, nothing else may.
        moved = torch.where(masks.padding, (masks.context + 5) % 16, masks.context)
        again = model(images, Masks(moved, masks.targets, masks.padding), full_pass=False)[0]
        assert torch.allclose(predictions, again, atol=1e-6, rtol=0)
        # Each row equals the row alone, encoded with its real context tokens only.
        for row in range(16):
            real = masks.context[row][~masks.padding[row]][None]
            alone = Masks(real, masks.targets[row : row + 1])
            single = model(images[row : row + 1], alone, full_pass=False)[0]
            assert torch.allclose(predictions[row : row + 1], single, atol=1e-5, rtol=0)


def test_pad_with_sigreg_on_context_embeddings_is_rejected() -> None:
    base = {
        "data": {"name": "synthetic", "image_size": 16, "n_train": 64, "n_test": 32},
        "model": SMALL.model_dump(),
        "mask": {"scheme": "multiblock", "context": "pad", "min_context": 2},
        "strategy": {"kind": "sigreg", "embeddings": "context_tokens"},
        "optim": {"steps": 1},
    }
    with pytest.raises(ValidationError, match=r"mask\.context: pad"):
        ExperimentSpec.model_validate(base)
