"""``jepa-lab bench-encoder``: the INT8 deployment measurement of an existing run, and the
end-to-end latency of a served encoder (``mlflow models serve``) over HTTP (docs/deploy.md)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jepa_lab.cli.options import DataDirOption, DeviceOption, TrackingUriOption, fail, store_uri

if TYPE_CHECKING:
    from jepa_lab.spec.experiment import ExperimentSpec

MAX_REQUESTS = 10000  # HTTP requests are bounded: this is a benchmark, not a load test


def _dir_run(run_dir: Path, tracking_uri: str | None) -> tuple[str | None, str | None]:
    """The MLflow run a run directory recorded (mlflow_run.json) and the store to log to; no run
    when none is recorded, or when the store resolved now is not the one recorded (a note)."""
    from jepa_lab.track.redact import redact
    from jepa_lab.track.rundir import recorded_run, same_store

    recorded = recorded_run(run_dir)
    if recorded is None:
        return None, None
    uri = store_uri(tracking_uri, write=True)  # preflight now, before the measurement
    if not same_store(recorded.get("tracking_uri", ""), uri):
        print(
            f"note: {run_dir} was logged to {recorded.get('tracking_uri')}, not {redact(uri)}: "
            "not logging (give --tracking-uri)",
            file=sys.stderr,
        )
        return None, None
    return recorded["run_id"], uri


def _run_files(target: str, tracking_uri: str | None, into: Path) -> tuple[Path, str | None]:
    """The run directory holding result.json and checkpoint.pt, and the MLflow run id (None
    for a run directory given by path: see :func:`_dir_run`)."""
    if Path(target).is_dir():
        return Path(target), None
    from jepa_lab.track.reader import download_artifact
    from jepa_lab.track.store import TrackingError

    uri = store_uri(tracking_uri, write=False)
    try:
        download_artifact(uri, target, "result.json", into)
        download_artifact(uri, target, "checkpoint/checkpoint.pt", into)
    except TrackingError as exc:
        fail(f"{target} is neither a run directory nor a logged run with a checkpoint: {exc}")
    (into / "checkpoint" / "checkpoint.pt").replace(into / "checkpoint.pt")
    return into, target


def _spec(run_dir: Path) -> ExperimentSpec:
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.spec.load import Source, SpecError, validate

    result = run_dir / "result.json"
    if not result.is_file() or not (run_dir / "checkpoint.pt").is_file():
        fail(f"{run_dir}: needs result.json and checkpoint.pt (a finished jepa-lab run)")
    data = json.loads(result.read_text())["spec"]
    try:
        return validate(ExperimentSpec, data, Source(str(result)))
    except SpecError as exc:
        fail(exc.messages)


def invocations_url(url: str) -> str:
    """The scoring endpoint of a served model: ``url`` itself when it ends in ``/invocations``,
    else ``url``/invocations (``http://127.0.0.1:5001`` and ``.../invocations`` both work)."""
    url = url.rstrip("/")
    return url if url.endswith("/invocations") else url + "/invocations"


def http_latency(url: str, images: Any, requests: int, warmup: int) -> dict[str, float]:
    """p50/p99 of ``requests`` POSTs of ``images`` (B, C, H, W) to the served model at ``url``
    (client time: the whole round trip), after ``warmup`` untimed ones. A server that is not
    there or refuses the request is a one-line failure."""
    import urllib.error  # here, not at the top: every command would pay for http.client
    import urllib.request

    import numpy as np

    body = json.dumps({"inputs": images.tolist()}).encode()
    endpoint = invocations_url(url)
    times = []
    for index in range(warmup + requests):
        request = urllib.request.Request(
            endpoint, data=body, headers={"Content-Type": "application/json"}
        )
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            fail(f"{endpoint}: HTTP {exc.code} {exc.reason}: {detail}")
        except (OSError, ValueError) as exc:  # refused, timed out, not a URL
            fail(f"{endpoint}: no answer from a served model ({exc})")
        if index >= warmup:
            times.append(1000 * (time.perf_counter() - began))
    p50, p99 = np.percentile(np.asarray(times), [50, 99])
    return {"http/client_p50_ms": float(p50), "http/client_p99_ms": float(p99)}


def bench_encoder(
    target: Annotated[str, typer.Argument(help="Run directory, or an MLflow run id.")],
    tokens: Annotated[int | None, typer.Option(help="Context tokens (spec default 128).")] = None,
    batch: Annotated[int | None, typer.Option(help="Sequences per call (default 1).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto, torchao, ao_dynamic or onnxruntime.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default 1).")] = None,
    iters: Annotated[int | None, typer.Option(help="Timed calls per round.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Interleaved rounds.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed calls per round.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    http: Annotated[
        str | None,
        typer.Option("--http", help="Also time a served model at this URL (mlflow models serve)."),
    ] = None,
    requests: Annotated[
        int, typer.Option(min=1, max=MAX_REQUESTS, help="HTTP requests timed.")
    ] = 200,
    data_dir: DataDirOption = None,
    device: DeviceOption = None,
    tracking_uri: TrackingUriOption = None,
    track: Annotated[
        bool, typer.Option("--track/--no-track", help="Log the results to the run (run ids).")
    ] = True,
) -> None:
    """INT8 accuracy, fidelity and fp32/INT8 latency of a trained run's evaluation encoder."""
    from jepa_lab.eval.deploy import DeployError
    from jepa_lab.spec.experiment import DeploySpec
    from jepa_lab.spec.load import Source, SpecError, validate
    from jepa_lab.training.checkpoint import CheckpointError
    from jepa_lab.training.saved import deploy_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, run_id = _run_files(target, tracking_uri, Path(tmp))
        log_uri = None
        if track and run_id is None:
            run_id, log_uri = _dir_run(run_dir, tracking_uri)
        spec = _spec(run_dir)
        given = {"tokens": tokens, "batch": batch, "backend": backend, "threads": threads,
                 "iters": iters, "rounds": rounds, "warmup": warmup}  # fmt: skip
        data = spec.eval.deploy.model_dump() | {"enabled": True}
        data |= {k: v for k, v in given.items() if v is not None}
        try:
            settings = validate(DeploySpec, data, Source("bench-encoder options"))
        except SpecError as exc:
            fail(exc.messages)
        try:
            report = deploy_checkpoint(
                spec, run_dir / "checkpoint.pt", settings, data_dir=data_dir, device=device
            )
        except (DeployError, CheckpointError) as exc:
            fail(str(exc))
    metrics = dict(report.metrics)
    if http is not None:
        from jepa_lab.data.datasets import load_dataset

        images = load_dataset(spec.data, data_dir).test_images[: settings.batch].float().numpy()
        metrics |= http_latency(http, images, requests, settings.warmup)
        # The server's own compute, apart from the client's round trip: the same models in this
        # process on the same images (fp32 for `encoder`, INT8 for `encoder_int8`).
        import numpy as np
        import torch

        pixels = torch.from_numpy(images)
        for name, run in (("fp32", report.fp32), ("int8", report.int8.run)):
            server = []
            with torch.inference_mode():
                for _ in range(requests):
                    began = time.perf_counter()
                    run(pixels)
                    server.append(1000 * (time.perf_counter() - began))
            metrics[f"http/model_{name}_p50_ms"] = float(np.percentile(server, 50))
    _print(metrics, report.context)
    output = {"target": target, "mlflow_run_id": run_id, "metrics": metrics,
              "context": report.context, "settings": settings.model_dump()}  # fmt: skip
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(output, indent=2))
    if track and run_id is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(log_uri or store_uri(tracking_uri, write=True))
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        print(f"mlflow: logged {len(metrics)} metrics to run {run_id}")


def _print(metrics: dict[str, float], context: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"encoder deployment ({context['backend']}, {context['threads']} thread)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}")
    console = Console()
    console.print(table)
    if context.get("warning"):
        console.print(f"warning: {context['warning']}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("bench-encoder")(bench_encoder)
