"""The evaluation encoder as an MLflow model (``mlflow.pyfunc``): what ``mlflow models serve``
serves and ``mlflow.pyfunc.load_model`` loads.

The model takes images (B, C, H, W), uint8 or float in [0, 255] (the signature says float32:
uint8 is cast safely), normalises them inside and returns (B, D) mean-pooled embeddings. It is a
state dict plus the architecture (the run's ``model`` spec section), rebuilt by jepa-lab's own
code, which travels with the model (``code_paths``), so serving needs no jepa-lab install. The
INT8 copy (``encoder_int8``) holds the int8 ONNX file for the onnxruntime backend; for the torch
backends it holds the fp32 weights and quantises them again on load (dynamic INT8 depends only on
the weights, so the result is the same).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

if TYPE_CHECKING:
    from jepa_lab.eval.deploy import Embedder, Quantised
    from jepa_lab.spec.experiment import ExperimentSpec

ENCODER = "encoder"
ENCODER_INT8 = "encoder_int8"


class EncoderModel(PythonModel):
    """pyfunc wrapper: images (B, C, H, W) in [0, 255] -> embeddings (B, D) float32."""

    def load_context(self, context: Any) -> None:
        import torch

        from jepa_lab.core.models import Encoder
        from jepa_lab.eval.deploy import Embedder, onnx_runner, quantise
        from jepa_lab.spec.experiment import ModelSpec

        config = json.loads(Path(context.artifacts["config"]).read_text())
        torch.set_num_threads(config["threads"])
        if "onnx" in context.artifacts:
            self.run = onnx_runner(Path(context.artifacts["onnx"]).read_bytes(), config["threads"])
            return
        spec = ModelSpec.model_validate(config["model"])
        channels = config["channels"]
        encoder = Encoder(spec, config["image_size"], channels)
        embedder = Embedder(encoder, (0.0,) * channels, (1.0,) * channels)
        weights = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        embedder.load_state_dict(weights)
        embedder.eval()
        example = torch.zeros(1, channels, config["image_size"], config["image_size"])
        if config["backend"] == "fp32":
            model = embedder

            def run(x: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    return model(x)

            self.run = run
        else:
            self.run = quantise(embedder, config["backend"], example, config["threads"]).run

    def predict(self, context, model_input, params=None):
        # Untyped on purpose: MLflow validates inputs against type hints when they are given,
        # and the signature already says what the model takes.
        import torch

        images = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
        return self.run(images).float().numpy()


def requirements(onnx: bool) -> list[str]:
    """pip requirements pinned to what this environment runs."""
    packages = ["torch", "timm", "numpy", "pydantic", "pyyaml", "mlflow"]
    if onnx:
        packages += ["onnxruntime", "onnx"]
    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pinned.append(package)
    return pinned


def save_encoder(
    path: Path,
    spec: ExperimentSpec,
    embedder: Embedder,
    int8: Quantised | None = None,
    threads: int = 1,
) -> Path:
    """Write the fp32 encoder (or, given ``int8``, its INT8 copy) as an MLflow model at ``path``."""
    import torch

    import jepa_lab

    size, channels = spec.data.image_size, spec.data.channels
    work = path.parent / f"{path.name}-files"  # artifacts are copied into the model
    work.mkdir(parents=True)
    backend = "fp32" if int8 is None else int8.backend
    config = {
        "model": spec.model.model_dump(mode="json"),
        "image_size": size,
        "channels": channels,
        "backend": backend,
        "threads": threads,
    }
    (work / "config.json").write_text(json.dumps(config, indent=2))
    artifacts = {"config": str(work / "config.json")}
    if int8 is not None and int8.onnx is not None:
        (work / "encoder_int8.onnx").write_bytes(int8.onnx)
        artifacts["onnx"] = str(work / "encoder_int8.onnx")
    else:
        torch.save(embedder.state_dict(), work / "weights.pt")
        artifacts["weights"] = str(work / "weights.pt")
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, channels, size, size), generator=generator)
    example_np = example.float().numpy()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.model.dim))]),
    )
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(
        str(path),
        python_model=EncoderModel(),
        artifacts=artifacts,
        code_paths=[str(Path(jepa_lab.__file__).parent)],
        signature=signature,
        input_example=example_np,
        pip_requirements=requirements(onnx="onnx" in artifacts),
    )
    return path


def log_encoders(
    log_artifacts: Callable[[Path, str], None],
    spec: ExperimentSpec,
    embedder: Embedder,
    int8: Quantised | None,
) -> None:
    """Log ``encoder`` (and ``encoder_int8`` when given) as MLflow models with
    ``log_artifacts(folder, artifact_path)`` (a run logger's)."""
    threads = spec.eval.deploy.threads
    with tempfile.TemporaryDirectory() as tmp:
        log_artifacts(save_encoder(Path(tmp) / ENCODER, spec, embedder), ENCODER)
        if int8 is not None:
            saved = save_encoder(Path(tmp) / ENCODER_INT8, spec, embedder, int8, threads)
            log_artifacts(saved, ENCODER_INT8)
