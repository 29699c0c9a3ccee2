"""Precision as a machine setting: bf16 really autocasts, fp32 is the old step, auto resolves
to the documented choice and every result records what was used."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Attention

from jepa_lab.cli.options import PRECISIONS as CLI_PRECISIONS
from jepa_lab.core.models import key_mask, match_attention
from jepa_lab.core.strategies import build_training
from jepa_lab.data.datasets import load_dataset
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import load
from jepa_lab.training import loop
from jepa_lab.training import precision as precision_module
from jepa_lab.training.loop import TrainOptions, global_batch, train, train_step
from jepa_lab.training.optim import build_optimizer
from jepa_lab.training.precision import PRECISIONS, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")
FAST = ["optim.steps=10", "log_every=5", "eval.baselines=false"]


def smoke(path: Path, *overrides: str) -> ExperimentSpec:
    return load(ExperimentSpec, path, [*FAST, *overrides])


def _one_step(spec: ExperimentSpec, precision: str | None) -> tuple[list, list, torch.Tensor]:
    """(qkv output dtypes, autocast states inside the loss, SIGReg value) of one step."""
    data = load_dataset(spec.data, None)
    model, strategy = build_training(spec, 1)
    optimizer = build_optimizer(model, spec.optim, fused=False)
    dtypes: list[torch.dtype] = []
    model.encoder.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, out: dtypes.append(out.dtype)
    )
    states: list[bool] = []
    regs: list[torch.Tensor] = []
    loss = strategy.loss

    def spy(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        states.append(torch.is_autocast_enabled("cpu"))
        total, reg = loss(*args, **kwargs)  # type: ignore[arg-type]
        assert total.dtype == torch.float32  # the loss is reduced in fp32
        if reg is not None:
            regs.append(reg)
        return total, reg

    strategy.loss = spy  # type: ignore[method-assign]
    images, masks = global_batch(spec, data, 0, CPU)
    losses = train_step(model, strategy, optimizer, images, masks, spec.loss, 0, None, precision)
    assert all(x.dtype == torch.float32 for x in losses if x is not None)
    return dtypes, states, regs[0] if regs else torch.zeros(())


def test_bf16_on_the_cpu_runs_the_matmuls_in_bf16_and_sigreg_in_fp32(smoke_path: Path) -> None:
    spec = smoke(smoke_path, "strategy.kind=sigreg", "strategy.projector=null")
    dtypes, states, reg = _one_step(spec, "bf16")
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the context pass and the full pass
    assert states == [True]
    assert reg.dtype == torch.float32 and torch.isfinite(reg)


def test_fp32_opens_no_autocast(smoke_path: Path) -> None:
    dtypes, states, _ = _one_step(smoke(smoke_path), "fp32")
    assert dtypes == [torch.float32] and states == [False]


def test_the_default_is_auto(smoke_path: Path) -> None:
    dtypes, states, _ = _one_step(smoke(smoke_path), None)
    native = cpu_has_native_bf16()
    assert dtypes == [torch.bfloat16 if native else torch.float32]
    assert states == [native]


def test_fp32_is_bit_identical_to_the_step_from_before_the_setting(
    smoke_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the setting existed the CPU step ran without autocast: that is still the default
    on a CPU without native bf16, and --precision fp32 must give it bit for bit."""
    spec = smoke(smoke_path)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    plain = train(spec, options=TrainOptions(device="cpu"))
    monkeypatch.undo()
    fp32 = train(spec, options=TrainOptions(device="cpu", precision="fp32"))
    assert plain.history == [
        {**row, "train/images_per_second": plain.history[i]["train/images_per_second"]}
        for i, row in enumerate(fp32.history)
    ]
    assert plain.metrics == fp32.metrics
    assert plain.provenance["precision"] == fp32.provenance["precision"] == "fp32"


def test_auto_resolves_to_the_documented_choice_and_is_recorded(smoke_path: Path) -> None:
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    assert resolve_precision(None, CPU) == expected  # the default is auto
    assert resolve_precision(None, torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    for asked in ("auto", None):
        result = train(smoke(smoke_path, "optim.steps=5"), options=TrainOptions(precision=asked))
        assert result.provenance["precision"] == expected
        assert result.to_dict()["provenance"]["precision"] == expected


def test_the_cpu_flags_decide_native_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(flags) or __import__("sys").platform == "darwin"
    flags.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_native_bf16(flags) or __import__("sys").platform == "darwin"


def test_the_cli_offers_the_same_precisions_and_refuses_others() -> None:
    assert CLI_PRECISIONS == PRECISIONS
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", CPU)


def _fused_flags(modules: Iterable[torch.nn.Module]) -> set[bool]:
    return {m.fused_attn for m in modules if isinstance(m, Attention)}


@pytest.mark.parametrize(
    ("precision", "device", "fused"),
    [("bf16", "cpu", False), ("fp32", "cpu", True), ("bf16", "cuda", True), ("fp32", "cuda", True)],
)
def test_the_attention_kernel_follows_the_precision(
    smoke_path: Path, precision: str, device: str, fused: bool
) -> None:
    model, strategy = build_training(smoke(smoke_path), 1)
    match_attention(model.modules(), precision, torch.device(device))
    match_attention(strategy.modules(), precision, torch.device(device))
    assert _fused_flags(model.modules()) == {fused}
    assert _fused_flags(strategy.modules()) in ({fused}, set())  # EMA's target encoder, if any


def test_the_explicit_attention_equals_the_fused_kernel_with_a_key_mask() -> None:
    torch.manual_seed(0)
    attention = Attention(32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(6, 9, 32)
    padding = torch.zeros(6, 9, dtype=torch.bool)
    padding[:3, 6:] = True  # the last keys of half the batch are padding
    outputs = []
    for fused in (True, False):
        attention.fused_attn = fused
        outputs.append(attention(x, attn_mask=key_mask(padding)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_a_bf16_run_on_the_cpu_trains_with_the_explicit_attention(
    smoke_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[torch.nn.Module]] = []

    def spy(modules: Iterable[torch.nn.Module], precision: str, device: torch.device) -> None:
        seen.append(list(modules))
        match_attention(seen[-1], precision, device)

    monkeypatch.setattr(loop, "match_attention", spy)
    result = train(smoke(smoke_path, "optim.steps=2"), options=TrainOptions(precision="bf16"))
    assert result.provenance["precision"] == "bf16"
    assert seen and all(_fused_flags(modules) <= {False} for modules in seen)
    assert any(_fused_flags(modules) == {False} for modules in seen)
