"""The INT8 copy of the evaluation encoder: quantisation, fidelity, determinism, metrics."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from jepa_lab.core.models import build_model
from jepa_lab.data.datasets import load_dataset
from jepa_lab.eval import deploy as dp
from jepa_lab.spec.experiment import DeploySpec, ExperimentSpec
from jepa_lab.spec.load import load

from ..conftest import STUDIES

FAST = ["eval.baselines=false", "eval.max_iter=20", "optim.steps=10"]
BACKENDS = [b for b in ("onnxruntime", "ao_dynamic", "torchao") if dp.available(b)]


@pytest.fixture(scope="module")
def trained():
    """A briefly trained smoke model, its data and spec (random weights are too easy)."""
    from jepa_lab.training.loop import train

    spec = load(ExperimentSpec, STUDIES / "smoke.yaml", FAST)
    result = train(spec)
    assert result.encoder is not None
    return spec, load_dataset(spec.data), result


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_linear_is_quantised_and_shapes_are_kept(trained, backend: str) -> None:
    spec, data, result = trained
    fp32 = result.encoder
    before = {k: v.clone() for k, v in fp32.state_dict().items()}
    images = data.test_images[:8].float()
    int8 = dp.quantise(fp32, backend, images)
    assert int8.linears == dp.count_linears(fp32) == 4 * spec.model.depth
    assert int8.run(images).shape == fp32(images).shape == (8, spec.model.dim)
    # the original is untouched: same weights, still plain nn.Linear
    assert all(torch.equal(before[k], v) for k, v in fp32.state_dict().items())
    assert all(type(m.weight) is nn.Parameter for m in fp32.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_is_faithful_and_deterministic(trained, backend: str) -> None:
    _, data, result = trained
    images = data.test_images[:64].float()
    int8 = dp.quantise(result.encoder, backend, images)
    with torch.inference_mode():
        reference = result.encoder(images)
    outputs = [int8.run(images) for _ in range(5)]
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])
    fidelity = dp.fidelity(reference, outputs[0])
    assert fidelity["deploy/int8_cos"] >= 0.999
    assert fidelity["deploy/int8_rel_l2"] <= 0.05


def test_deploy_metrics_and_the_trained_model_is_untouched(tmp_path) -> None:
    from jepa_lab.training.checkpoint import read_checkpoint
    from jepa_lab.training.loop import TrainOptions, train

    overrides = [
        *FAST,
        "eval.deploy.enabled=true",
        "eval.deploy.iters=5",
        "eval.deploy.rounds=2",
        "eval.deploy.warmup=1",
        "eval.deploy.tokens=16",
    ]
    spec = load(ExperimentSpec, STUDIES / "smoke.yaml", overrides)
    result = train(spec, options=TrainOptions(run_dir=tmp_path))
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(v.dtype.is_floating_point for k, v in saved.items() if k.endswith("weight"))
    model = build_model(spec.model, spec.data.image_size, spec.data.channels, spec.seed)
    model.load_state_dict(saved)  # a plain fp32 JEPA loads it: nothing was quantised in place
    wanted = [
        "deploy/int8_probe_acc",
        "deploy/int8_knn_acc",
        "deploy/int8_mcnemar_p",
        "deploy/int8_cos",
        "deploy/int8_rel_l2",
        "deploy/fp32_p50_ms",
        "deploy/fp32_p99_ms",
        "deploy/int8_p50_ms",
        "deploy/int8_p99_ms",
        "deploy/speedup_p50",
        "deploy/slo_met",
    ]
    assert set(wanted) <= set(result.metrics)
    assert result.metrics["deploy/int8_cos"] >= 0.999
    assert result.to_dict()["deploy"]["backend"] in BACKENDS
    assert result.deploy["versions"]["torch"] == str(torch.__version__)


def test_a_missing_backend_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(dp.DeployError, match=r"pip install 'jepa-lab\[onnx\]'"):
        dp.resolve_backend("onnxruntime")
    assert dp.resolve_backend("auto") != "onnxruntime"


def test_deploy_spec_defaults_and_digest() -> None:
    settings = DeploySpec()
    assert (settings.enabled, settings.tokens, settings.batch, settings.slo_p99_ms) == (
        False, 128, 1, 25.0,
    )  # fmt: skip
    spec = load(ExperimentSpec, STUDIES / "smoke.yaml")
    data = spec.to_dict()
    data["eval"].pop("deploy")
    assert ExperimentSpec.model_validate(data).digest() == spec.digest()
    on = load(ExperimentSpec, STUDIES / "smoke.yaml", ["eval.deploy.enabled=true"])
    assert on.digest() != spec.digest()
