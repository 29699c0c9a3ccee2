"""The CUDA path: bf16 autocast, fused AdamW, torch.compile, NCCL ranks. Skipped without a GPU."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from jepa_lab.core.models import JEPA
from jepa_lab.core.objective import jepa_losses
from jepa_lab.core.strategies import Strategy, build_training
from jepa_lab.data.datasets import Dataset, load_dataset
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.training.loop import global_batch, train_step
from jepa_lab.training.optim import build_optimizer

from .test_distributed import cli_two_ranks
from .test_train import smoke

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")


def on_cuda(path: Path, *overrides: str) -> tuple[ExperimentSpec, Dataset, JEPA, Strategy]:
    """The smoke spec's data, model and strategy on the GPU, as the trainer builds them."""
    spec = smoke(path, *overrides)
    data = load_dataset(spec.data, None).to(CUDA)
    total = spec.optim.total_steps(len(data.train_labels))
    model, strategy = build_training(spec, total)
    return spec, data, model.to(CUDA), strategy.to(CUDA)


@pytest.mark.parametrize("kind", ["ema", "sigreg"])
def test_bf16_train_step_gives_finite_fp32_losses_and_moves_every_weight(
    smoke_path: Path, kind: str
) -> None:
    spec, data, model, strategy = on_cuda(smoke_path, f"strategy.kind={kind}")
    optimizer = build_optimizer(model, spec.optim, fused=True)
    matmul_dtypes: list[torch.dtype] = []  # of a Linear: residual sums stay fp32 under autocast
    qkv = model.encoder.blocks[0].attn.qkv
    qkv.register_forward_hook(lambda m, i, out: matmul_dtypes.append(out.dtype))
    weights = [p.detach().clone() for p in model.parameters()]
    targets = [p.detach().clone() for p in strategy.parameters()]
    for step in range(3):
        images, masks = global_batch(spec, data, step, CUDA)
        loss, pred, reg = train_step(
            model, strategy, optimizer, images, masks, spec.loss, step, spec.optim.grad_clip
        )
        assert loss.dtype == pred.dtype == torch.float32  # losses in fp32 whatever the autocast
        assert torch.isfinite(loss) and torch.isfinite(pred)
        assert (reg is None) == (kind == "ema") and (reg is None or torch.isfinite(reg))
    for (name, param), before in zip(model.named_parameters(), weights, strict=True):
        assert not torch.equal(param, before), f"{name} did not move"
    if kind == "ema":  # the EMA target follows the online encoder, a little
        moved = [not torch.equal(a, b) for a, b in zip(strategy.parameters(), targets, strict=True)]
        assert moved and any(moved)
    assert matmul_dtypes and set(matmul_dtypes) == {torch.bfloat16}  # matmuls ran in bf16


def test_fused_adamw_is_fused_and_steps_like_the_unfused_one(smoke_path: Path) -> None:
    spec, _, model, _ = on_cuda(smoke_path)
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, spec.optim, fused=True)
    plain = build_optimizer(twin, spec.optim, fused=False)
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"] is True
    assert not plain.defaults["fused"]
    generator = torch.Generator(CUDA).manual_seed(0)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        a.grad = torch.randn(a.shape, device=CUDA, generator=generator)
        b.grad = a.grad.clone()
    fused.step()
    plain.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("bf16", "tolerance"), [(False, 1e-4), (True, 2e-2)], ids=["fp32", "bf16"])
def test_compiled_model_gives_the_eager_loss(
    smoke_path: Path, bf16: bool, tolerance: float
) -> None:
    spec, data, model, strategy = on_cuda(smoke_path)
    images, masks = global_batch(spec, data, 0, CUDA)
    compiled = torch.compile(model)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        eager = jepa_losses(model, strategy, images, masks, spec.loss, 0).total
        traced = jepa_losses(compiled, strategy, images, masks, spec.loss, 0).total
    assert torch.isfinite(eager)
    torch.testing.assert_close(traced, eager, rtol=tolerance, atol=tolerance)


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"NCCL needs one GPU per rank: 2 ranks, {torch.cuda.device_count()} GPU(s) here",
)
@pytest.mark.parametrize(
    "device",
    [
        pytest.param([], id="auto"),
        pytest.param(["--device", "cuda"], id="cuda"),  # a bare 'cuda' is cuda:LOCAL_RANK
    ],
)
def test_cli_nproc_two_nccl_ranks_agree_and_only_rank_zero_writes(
    tmp_path: Path, device: list[str]
) -> None:
    result = cli_two_ranks(tmp_path / "run", *device)
    assert result["provenance"]["device"].startswith("cuda")
