"""The INT8 copy of the evaluation encoder: accuracy, fidelity and latency (docs/deploy.md).

A *copy* of the evaluation encoder is quantised after training (the trained model and its
checkpoint are never touched) and compared with its fp32 original:

- accuracy: the same linear probe and kNN on INT8 features, paired with fp32 on the same test
  images (exact McNemar test on the per-image probe predictions);
- fidelity: cosine and relative L2 of INT8 against fp32 embeddings of the real test images;
- speed: p50/p90/p99 latency of fp32 and INT8, interleaved round by round, on a ``tokens``-long
  synthetic token batch fed straight to the encoder's blocks (the 128-token context of the design,
  whatever the image size: a 28 px image at patch 7 has only 16 tokens);
- context: threads, backend, library versions and the load average before and after.

Backends (``auto`` takes the first installed, in this order; measured on a 2-core CPU):
onnxruntime (dynamic int8, ~2.6x fp32, the best tail), ao_dynamic (``torch.ao`` dynamic int8,
~2x, deprecated: offered only while torch still ships it), torchao (Int8DynamicActivationInt8Weight;
slower than fp32 in eager mode on CPU, torchao issue 4365, and the one that runs on CUDA, so first
there). PT2E with inductor freezing is never offered: it gave outputs drifting from call to call.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_lab.core.models import Encoder
from jepa_lab.data.datasets import Dataset
from jepa_lab.eval.evaluate import PROBE_SEED, probe_subset
from jepa_lab.eval.paired import mcnemar_exact
from jepa_lab.eval.probe import fit_probe, knn_predict
from jepa_lab.spec.experiment import DeploySpec, ExperimentSpec

AUTO_ORDER = {
    "cpu": ("onnxruntime", "ao_dynamic", "torchao"),
    "cuda": ("torchao", "onnxruntime", "ao_dynamic"),
}
EXTRA = {"onnxruntime": "onnx", "torchao": "torchao", "ao_dynamic": "deploy"}
SEED = 0  # the synthetic token batch of the latency benchmark


class DeployError(Exception):
    """An INT8 backend is unavailable or failed; the message names the fix."""


def _importable(*modules: str) -> bool:
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True


def available(backend: str) -> bool:
    """Whether ``backend`` can run here (its optional packages import)."""
    if backend == "onnxruntime":
        return _importable("onnx", "onnxruntime", "onnxruntime.quantization")
    if backend == "torchao":
        return _importable("torchao.quantization")
    if backend == "ao_dynamic":
        # Deprecated in torch.ao and slated for deletion: offered only while it is there.
        quantization = importlib.import_module("torch.ao.quantization")
        engines = torch.backends.quantized.supported_engines
        return hasattr(quantization, "quantize_dynamic") and any(
            e in engines for e in ("x86", "fbgemm", "qnnpack")
        )
    raise ValueError(f"unknown backend {backend!r}")


def resolve_backend(backend: str, device_type: str = "cpu") -> str:
    """The concrete backend ``backend`` names here (``auto``: the first available in
    AUTO_ORDER); a missing one is a one-line :class:`DeployError` naming the extra to install."""
    if backend == "auto":
        order = AUTO_ORDER["cuda" if device_type == "cuda" else "cpu"]
        found = next((b for b in order if available(b)), None)
        if found is None:
            raise DeployError(
                "eval.deploy: no INT8 backend is installed: pip install 'jepa-lab[deploy]'"
            )
        return found
    if not available(backend):
        if backend == "ao_dynamic":
            raise DeployError(
                f"eval.deploy.backend ao_dynamic: torch {torch.__version__} has no "
                "torch.ao.quantization.quantize_dynamic: use backend onnxruntime "
                "(pip install 'jepa-lab[onnx]')"
            )
        raise DeployError(
            f"eval.deploy.backend {backend}: {backend} is not installed: "
            f"pip install 'jepa-lab[{EXTRA[backend]}]'"
        )
    return backend


# ----------------------------------------------------------------------------- the models


class Embedder(nn.Module):
    """Images (B, C, H, W), uint8 or float in [0, 255] -> (B, D) mean-pooled embeddings.

    The dataset's normalisation is inside, so a client sends raw pixels."""

    scale: Tensor
    shift: Tensor

    def __init__(self, encoder: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.encoder = encoder
        scale = [1 / (255 * s) for s in std]
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
        self.register_buffer("scale", torch.tensor(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images.float() * self.scale + self.shift).mean(1)


class Trunk(nn.Module):
    """Tokens (B, N, K) -> (B, K): the encoder's blocks, final norm and mean pool; the latency
    benchmark feeds it N = ``tokens`` synthetic tokens (patch embedding and positions skipped:
    a few percent of the cost)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.blocks, self.norm = encoder.blocks, encoder.norm
        self.dim = encoder.dim

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens).mean(1)


def embedder(encoder: nn.Module, data: Dataset) -> Embedder:
    """An fp32 CPU copy of ``encoder`` with ``data``'s normalisation inside, in eval mode."""
    return Embedder(copy.deepcopy(encoder).float().cpu(), data.mean, data.std).eval()


def count_linears(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Linear) for m in module.modules())


@dataclass
class Quantised:
    """An INT8 copy: ``run`` maps the original module's input to its output (no grad)."""

    run: Callable[[Tensor], Tensor]
    backend: str
    linears: int  # nn.Linear layers whose weights became int8
    onnx: bytes | None = None  # the int8 ONNX model (onnxruntime)


def quantise(module: nn.Module, backend: str, example: Tensor, threads: int = 1) -> Quantised:
    """An INT8 copy of ``module`` (never ``module`` itself); ``example`` is a valid input
    (dim 0 the batch), used to export the graph for onnxruntime."""
    copied = copy.deepcopy(module).eval()
    if backend == "ao_dynamic":
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        with warnings.catch_warnings():  # its deprecation notice, once per call
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
            quantised = torch.ao.quantization.quantize_dynamic(
                copied.cpu(), {nn.Linear}, dtype=torch.qint8
            )
        linears = sum(isinstance(m, DynamicLinear) for m in quantised.modules())
        return Quantised(_no_grad(quantised), backend, linears)
    if backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(copied, Int8DynamicActivationInt8WeightConfig())
        linears = sum(
            isinstance(m, nn.Linear) and type(m.weight) not in (nn.Parameter, Tensor)
            for m in copied.modules()
        )
        return Quantised(_no_grad(copied), backend, linears)
    if backend == "onnxruntime":
        return _onnx_int8(copied.cpu(), example.cpu(), threads)
    raise DeployError(f"unknown INT8 backend {backend!r}")


def _no_grad(module: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def _onnx_int8(module: nn.Module, example: Tensor, threads: int) -> Quantised:
    """Export to ONNX (TorchScript exporter: the dynamo one needs onnxscript), quantise its
    MatMul/Gemm weights to int8 with onnxruntime's dynamic quantisation, open a session."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                module, (example,), str(fp32), dynamo=False, input_names=["input"],
                output_names=["output"], dynamic_axes={"input": {0: "batch"}}, opset_version=17,
            )  # fmt: skip
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process, on the root logger, every time
        try:
            quantize_dynamic(
                fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
            )
        finally:
            root.setLevel(level)
        payload = int8.read_bytes()
    graph = onnx.load_from_string(payload).graph
    linears = sum(
        1
        for init in graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 2
    )
    return Quantised(onnx_runner(payload, threads), "onnxruntime", linears, payload)


def onnx_runner(payload: bytes, threads: int) -> Callable[[Tensor], Tensor]:
    """A function running the ONNX model ``payload`` on the CPU with ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        array = x.detach().cpu().float().numpy()
        return torch.from_numpy(session.run(None, {"input": array})[0])

    return run


# ---------------------------------------------------------------------------- measurement


def fidelity(fp32: Tensor, int8: Tensor) -> dict[str, float]:
    """Mean and worst cosine, and mean relative L2, of int8 (N, D) against fp32 (N, D)."""
    cos = F.cosine_similarity(int8.float(), fp32.float(), dim=1)
    rel = (int8.float() - fp32.float()).norm(dim=1) / fp32.float().norm(dim=1).clamp_min(1e-12)
    return {
        "deploy/int8_cos": float(cos.mean()),
        "deploy/int8_cos_min": float(cos.min()),
        "deploy/int8_rel_l2": float(rel.mean()),
    }


def _features(run: Callable[[Tensor], Tensor], images: Tensor, batch: int) -> Tensor:
    return torch.cat([run(images[i : i + batch].cpu()) for i in range(0, len(images), batch)])


def accuracy(
    spec: ExperimentSpec, data: Dataset, fp32: Callable[[Tensor], Tensor], int8: Quantised
) -> dict[str, float]:
    """Probe and kNN of fp32 and INT8 features by the evaluation's procedure, paired on the test
    images, and the fidelity of INT8 embeddings on them."""
    index = probe_subset(len(data.train_labels), spec.eval.probe_train)
    train_y, test_y = data.train_labels.cpu()[index], data.test_labels.cpu()
    train_images = data.train_images.cpu()[index]
    metrics: dict[str, float] = {}
    right = {}
    features = {}
    for name, run in (("fp32", fp32), ("int8", int8.run)):
        train = _features(run, train_images, spec.eval.batch_size)
        test = _features(run, data.test_images.cpu(), spec.eval.batch_size)
        features[name] = test
        probe = fit_probe(train, train_y, test, test_y, spec.eval, PROBE_SEED, index)
        assert probe.test_pred is not None
        right[name] = probe.test_pred == test_y
        knn = knn_predict(train, train_y, test, spec.eval.knn_k, spec.data.n_classes)
        metrics[f"deploy/{name}_probe_acc"] = probe.test_acc
        metrics[f"deploy/{name}_probe_val_acc"] = probe.val_acc
        metrics[f"deploy/{name}_knn_acc"] = float((knn == test_y).double().mean())
    metrics["deploy/int8_probe_delta"] = (
        metrics["deploy/int8_probe_acc"] - metrics["deploy/fp32_probe_acc"]
    )
    metrics["deploy/int8_mcnemar_p"] = mcnemar_exact(right["int8"].cpu(), right["fp32"].cpu())
    return metrics | fidelity(features["fp32"], features["int8"])


def percentiles(times_ms: list[float], prefix: str) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(times_ms), [50, 90, 99])
    return {f"{prefix}_p50_ms": float(p50), f"{prefix}_p90_ms": float(p90),
            f"{prefix}_p99_ms": float(p99)}  # fmt: skip


def time_calls(
    calls: dict[str, Callable[[], object]], spec: DeploySpec, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Milliseconds of each call (``time.perf_counter`` around one synchronous call), for
    ``spec.rounds`` rounds of ``spec.warmup`` untimed then ``spec.iters`` timed calls each; the
    order of the calls alternates round by round, so load drifts hit them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(spec.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            call = calls[name]
            for _ in range(spec.warmup):
                call()
            for _ in range(spec.iters):
                sync()
                began = time.perf_counter()
                call()
                sync()
                times[name].append(1000 * (time.perf_counter() - began))
    return times


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def versions(backend: str) -> dict[str, str]:
    found = {"torch": str(torch.__version__)}
    packages = {"onnxruntime": ("onnxruntime", "onnx"), "torchao": ("torchao",)}
    for package in packages.get(backend, ()):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def latency(
    encoder: Encoder, spec: DeploySpec, backend: str, device: torch.device
) -> tuple[dict[str, float], dict[str, Any]]:
    """Latency metrics of fp32 and INT8 on ``spec.batch`` x ``spec.tokens`` synthetic tokens,
    and the context they were measured in (threads, versions, load)."""
    where = device if backend == "torchao" else torch.device("cpu")
    trunk = Trunk(copy.deepcopy(encoder)).float().to(where).eval()
    generator = torch.Generator().manual_seed(SEED)
    tokens = torch.randn(spec.batch, spec.tokens, trunk.dim, generator=generator).to(where)
    int8 = quantise(trunk, backend, tokens, spec.threads)
    fp32 = _no_grad(trunk)

    def sync() -> None:
        if where.type == "cuda":
            torch.cuda.synchronize(where)

    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = load_average()
    torch.set_num_threads(spec.threads)
    try:
        times = time_calls({"fp32": lambda: fp32(tokens), "int8": lambda: int8.run(tokens)},
                           spec, sync)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    after = load_average()
    metrics = percentiles(times["fp32"], "deploy/fp32") | percentiles(times["int8"], "deploy/int8")
    metrics["deploy/speedup_p50"] = metrics["deploy/fp32_p50_ms"] / metrics["deploy/int8_p50_ms"]
    metrics["deploy/slo_met"] = float(metrics["deploy/int8_p99_ms"] < spec.slo_p99_ms)
    # Busy: other processes want more cores than the benchmark leaves (its own threads excluded
    # from the load after it).
    spare = (cores or 1) - spec.threads
    busy = max(before, after - spec.threads) > spare
    metrics["deploy/load_before"], metrics["deploy/load_after"] = before, after
    metrics["deploy/busy"] = float(busy)
    context = {
        "backend": backend,
        "device": where.type,
        "threads": spec.threads,
        "cores": cores,
        "tokens": spec.tokens,
        "batch": spec.batch,
        "calls_per_backend": spec.rounds * spec.iters,
        "versions": versions(backend),
        "load_before": before,
        "load_after": after,
        "busy": busy,
        "warning": (
            f"load average {max(before, after):.2f} on {cores} cores: the machine is busy and "
            "these latencies are not meaningful"
            if busy
            else ""
        ),
    }
    return metrics, context


@dataclass
class DeployReport:
    """What :func:`deploy` measured, and the two models it measured."""

    metrics: dict[str, float]
    context: dict[str, Any]
    fp32: Embedder  # CPU copy, normalisation inside
    int8: Quantised  # INT8 copy of ``fp32``
    linears: int = 0  # nn.Linear layers of the encoder
    extra: dict[str, Any] = field(default_factory=dict)


def deploy(
    spec: ExperimentSpec,
    settings: DeploySpec,
    data: Dataset,
    encoder: nn.Module,
    device: torch.device,
) -> DeployReport:
    """Quantise a copy of the evaluation ``encoder`` and measure it against fp32 (``deploy/*``).

    ``settings`` is usually ``spec.eval.deploy``; ``bench-encoder`` passes its own."""
    backend = resolve_backend(settings.backend, device.type)
    fp32 = embedder(encoder, data)
    example = data.test_images[:2].cpu().float()
    int8 = quantise(fp32, backend, example, settings.threads)
    linears = count_linears(fp32)
    if int8.linears != linears:
        raise DeployError(
            f"{backend} quantised {int8.linears} of the encoder's {linears} linear layers"
        )
    metrics = accuracy(spec, data, _no_grad(fp32), int8)
    if not isinstance(encoder, Encoder):
        raise DeployError(f"the evaluation encoder is a {type(encoder).__name__}, not an Encoder")
    speed, context = latency(encoder, settings, backend, device)
    context |= {"slo_p99_ms": settings.slo_p99_ms, "linears": linears}
    return DeployReport(metrics | speed, context, fp32, int8, linears)
