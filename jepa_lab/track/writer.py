"""MLflow tracking: writing runs into the store (see :mod:`jepa_lab.track.store`).

Each run is opened by :func:`tracked_run`, which always closes it FINISHED, FAILED or KILLED, and
is fed through a :class:`RunLogger` whose ``log`` is the core's ``train(log=...)``. Runs are
addressed by explicit ids through ``MlflowClient``, never through MLflow's global "active run", so
parent and child runs (a study and its trials) and several threads coexist. Runs are read back by
:mod:`jepa_lab.track.reader`; the UI's ``mlflow server`` is managed by :mod:`jepa_lab.track.server`.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from mlflow.entities import Dataset as MlflowDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from jepa_lab.track.store import TrackingError, TrackingUnavailable, call, one_line, translated

if TYPE_CHECKING:
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.spec.world import WorldSpec
    from jepa_lab.training.result import TrainResult

SPEC_ARTIFACT = "spec.yaml"
FLUSH_ROWS = 500  # buffered metric values before a log_batch (MLflow takes 1000 at most)
FLUSH_SECONDS = 10.0  # ... or this long since the last one, whichever comes first
MAX_BATCH = 1000  # metric values MLflow takes in one log_batch
SYSTEM_METRICS_SECONDS = 10.0  # sampling interval; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins
TAG = "jepa_lab."  # prefix of every jepa-lab tag: jepa_lab.strategy, jepa_lab.config_id, ...
ERROR_TAG = TAG + "error"

T = TypeVar("T")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM while a run is open, so it ends KILLED."""


# --------------------------------------------------------------------------------- a run


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec data -> ``{"optim.lr": "0.001", ...}``; non-strings as JSON."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


class RunLogger:
    """Logs into one open MLflow run. ``log`` is buffered: one ``log_batch`` per ``flush_rows``
    values or ``flush_seconds`` (and on close), so logging stays a small share of training.

    Outages of a tracking server: a flush from ``log`` (inside training) tries once and, if the
    server does not answer, keeps the values buffered for the next flush; every other call
    (the final flush included) retries with backoff for up to $JEPA_LAB_TRACKING_RETRY_S, then
    raises :class:`TrackingUnavailable`, after which the run's remaining calls try only once.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        uri: str,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.seconds = 0.0  # wall time spent logging metrics, for the overhead budget
        self._pending: list[Metric] = []
        self._logged: set[str] = set()
        self._last_flush = time.monotonic()
        self._gave_up = False  # the server stayed down past the limit: stop waiting for it
        self._unsent = False  # a flush from log() found the server down

    def _call(self, action: Callable[[], T]) -> T:
        """``action()`` against the store, retried while a server is down (see the class)."""
        try:
            return call(self.uri, action, 0.0 if self._gave_up else None)
        except TrackingUnavailable:
            self._gave_up = True
            raise

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` (the core's ``train(log=...)``)."""
        began = time.perf_counter()
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self._logged.update(metrics)
        due = time.monotonic() - self._last_flush >= self.flush_seconds
        if due or len(self._pending) >= self.flush_rows:
            self.flush(wait=False)
        self.seconds += time.perf_counter() - began

    def flush(self, *, wait: bool = True) -> None:
        """Send the buffered values, in batches MLflow accepts. ``wait=False`` (inside training):
        one try; a server that does not answer leaves them buffered for the next flush."""
        self._last_flush = time.monotonic()
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            send = functools.partial(self.client.log_batch, self.run_id, metrics=batch)
            try:
                self._call(send) if wait else call(self.uri, send, 0.0)
            except TrackingUnavailable:
                if wait:
                    raise
                if not self._unsent:
                    print(
                        f"warning: run {self.run_id}: tracking server down; metrics stay "
                        "buffered and training goes on",
                        file=sys.stderr,
                        flush=True,
                    )
                self._unsent = True
                return
            del self._pending[: len(batch)]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            rows = [RunTag(k, str(v)) for k, v in tags.items()]
            self._call(lambda: self.client.log_batch(self.run_id, tags=rows))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, path: Path, artifact_path: str) -> None:
        with translated(self.uri):
            self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_spec(self, spec: ExperimentSpec | WorldSpec) -> None:
        """The resolved spec as dotted params and ``spec.yaml``; identity and provenance tags."""
        from jepa_lab.training.provenance import git_state

        data = spec.to_dict()
        params = [Param(key, value) for key, value in flatten(data).items()]
        self._call(lambda: self.client.log_batch(self.run_id, params=params))
        self.log_text(yaml.safe_dump(data, sort_keys=False), SPEC_ARTIFACT)
        commit, dirty, diff = git_state()
        tags = {
            TAG + "spec_name": spec.name,
            TAG + "strategy": spec.strategy.kind,
            TAG + "spec_digest": spec.digest(),
            TAG + "config_id": spec.digest(with_seed=False),
            TAG + "seed": str(spec.seed),
            TAG + "git_dirty": str(dirty).lower(),
            **{TAG + f"version.{k}": v for k, v in _versions().items()},
        }
        if commit is not None:
            tags |= {TAG + "git_commit": commit, MLFLOW_GIT_COMMIT: commit}
        self.set_tags(tags)
        if dirty and diff:
            self.log_text(diff, "git.diff")

    def log_dataset(self, described: Mapping[str, Any]) -> None:
        """The training data as an MLflow input: name, digest and split sizes (no host paths)."""
        profile = {k: v for k, v in described.items() if k not in ("name", "origin")}
        source = {"dataset": described["name"], "origin": described["origin"]}
        dataset = MlflowDataset(
            name=described["name"],
            digest=described["digest"][:16],
            source_type="jepa_lab",
            source=json.dumps(source),
            profile=json.dumps(profile),
        )
        tags = [InputTag("mlflow.data.context", "training")]
        inputs = [DatasetInput(dataset, tags)]
        self._call(lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def log_result(self, result: TrainResult, run_dir: Path | None) -> None:
        """Final metrics, provenance tags, result.json, checkpoint, curve plots and the dataset."""
        final = {k: v for k, v in result.metrics.items() if k not in self._logged}
        final["train/seconds"] = result.train_seconds
        final["train/images_per_second_avg"] = result.images_per_second
        self.log(final, result.steps)
        for name, values in result.series.items():  # per-horizon arrays: the horizon is the step
            for k, value in enumerate(values, start=1):
                self.log({name: value}, k)
        self.flush()
        facts = {
            k: v
            for k, v in result.provenance.items()
            if k in ("device", "device_name", "precision", "threads")
        }
        self.set_tags({TAG + k: str(v) for k, v in facts.items()} | {
            TAG + "completed": str(result.completed).lower(),
            TAG + "steps": str(result.steps),
        })  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            saved = run_dir / "result.json" if run_dir else None
            if saved is None or not saved.is_file():
                saved = Path(tmp) / "result.json"
                saved.write_text(json.dumps(result.to_dict(), indent=2))
            self.log_artifact(saved)
            if run_dir is not None and (run_dir / "checkpoint.pt").is_file():
                self.log_artifact(run_dir / "checkpoint.pt", "checkpoint")
            if result.history:
                self.log_artifact(plot_curves(result.history, Path(tmp) / "curves.png"), "plots")
        self.log_dataset(result.dataset)
        if result.encoder is not None:  # image runs only (world models log no encoder model)
            from jepa_lab.spec.experiment import ExperimentSpec
            from jepa_lab.track.model import log_encoders

            assert isinstance(result.spec, ExperimentSpec)
            log_encoders(self.log_artifacts, result.spec, result.encoder, result.int8)

    def close(self) -> None:
        """Flush what is buffered and record the time logging took."""
        self.flush()
        seconds = self.seconds
        self._call(lambda: self.client.log_metric(self.run_id, "tracking/log_seconds", seconds))


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    """One PNG of the training curves against the step: losses, lr, momentum, throughput."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, any thread

    panels = {
        "loss": ["train/loss", "train/loss_pred", "train/loss_reg"],
        "learning rate": ["train/lr"],
        "EMA momentum": ["train/momentum"],
        "images / s": ["train/images_per_second"],
    }
    panels = {title: [k for k in keys if k in history[0]] for title, keys in panels.items()}
    panels = {title: keys for title, keys in panels.items() if keys}
    steps = [row["step"] for row in history]
    figure = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    for axes, (title, keys) in zip(figure.subplots(1, len(panels)), panels.items(), strict=True):
        for key in keys:
            axes.plot(steps, [row[key] for row in history], label=key.removeprefix("train/"))
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if len(keys) > 1:
            axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """In the main thread, turn SIGTERM into :class:`Terminated` while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """While a run is being closed, the first Ctrl-C only warns; a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def handler(signum: int, frame: FrameType | None) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        print("closing the MLflow run; Ctrl-C again to abandon it", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _SystemMetrics:
    """MLflow's system-metrics sampler for one run. It publishes only after a whole sampling
    interval, so a run shorter than one would have no system metrics: ``stop`` then takes one
    last sample."""

    def __init__(self, run_id: str, uri: str) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            run_id, sampling_interval=SYSTEM_METRICS_SECONDS, tracking_uri=uri
        )
        self.monitor.start()
        self.first_step = self.monitor._logging_step

    def stop(self) -> None:
        monitor = self.monitor
        monitor.finish()
        if monitor._logging_step == self.first_step:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()


@contextlib.contextmanager
def tracked_run(
    uri: str,
    experiment_id: str,
    name: str,
    *,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    system_metrics: bool = True,
    reopen: str | None = None,
) -> Iterator[RunLogger]:
    """Open a run (a child of ``parent_run_id`` if given) and always close it. ``reopen``: the
    id of an earlier run to continue instead (a resumed training), set RUNNING again.

    Normal exit: FINISHED. KeyboardInterrupt or SIGTERM (:class:`Terminated`): KILLED. Any other
    exception: FAILED, its one-line message in the tag ``jepa_lab.error``. The exception is then
    re-raised. System metrics (CPU, memory, disk, network, GPU) are sampled while it is open.
    """
    client = MlflowClient(uri)
    run_tags = {MLFLOW_SOURCE_NAME: "jepa-lab", MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: _user()}
    run_tags |= dict(tags or {})
    if parent_run_id is not None:
        run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if reopen is not None:
        run_id = reopen
        call(uri, lambda: client.update_run(run_id, status="RUNNING"))
        call(uri, lambda: client.log_batch(
            run_id, tags=[RunTag(k, str(v)) for k, v in run_tags.items()]))  # fmt: skip
    else:
        created = call(uri, lambda: client.create_run(experiment_id, run_name=name, tags=run_tags))
        run_id = created.info.run_id
    logger, monitor = RunLogger(client, run_id, uri), None
    status, end_tags = RunStatus.FINISHED, {}
    try:
        monitor = _SystemMetrics(run_id, uri) if system_metrics else None
        with _sigterm_raises():
            yield logger
    except (KeyboardInterrupt, Terminated) as exc:
        status, end_tags = RunStatus.KILLED, {TAG + "stopped_by": type(exc).__name__}
        raise
    except BaseException as exc:
        status, end_tags = RunStatus.FAILED, {ERROR_TAG: one_line(exc, 1000)}
        raise
    finally:
        with _shielded():
            _close(logger, monitor, status, end_tags, failing=status != RunStatus.FINISHED)


def _close(
    logger: RunLogger,
    monitor: _SystemMetrics | None,
    status: int,
    tags: dict[str, str],
    *,
    failing: bool,
) -> None:
    """Flush, stop sampling, tag and terminate, each attempted whatever failed before. A run whose
    last metrics could not be written ends FAILED. While another exception propagates, a tracking
    failure here is a warning on stderr instead of replacing it."""
    problems = []
    try:
        logger.close()
    except TrackingError as exc:
        problems.append(exc)
        if status == RunStatus.FINISHED:
            status, tags = RunStatus.FAILED, {ERROR_TAG: f"logging failed: {exc}"}
    if monitor is not None:
        try:
            with translated(logger.uri):
                monitor.stop()
        except TrackingError as exc:  # its last sample lost: the run closes all the same
            print(f"warning: run {logger.run_id}: system metrics: {exc}", file=sys.stderr)
    try:
        logger.set_tags(tags)
        ended = RunStatus.to_string(status)
        logger._call(lambda: logger.client.set_terminated(logger.run_id, ended))
    except TrackingError as exc:
        problems.append(exc)
    if problems and not failing:
        raise problems[0]
    for problem in problems:
        print(f"warning: could not close run {logger.run_id}: {problem}", file=sys.stderr)


class Tracking:
    """One tracked run of a spec, shared by ``jepa-lab train`` and a study trial: the store, the
    experiment (created beforehand by :func:`jepa_lab.track.store.prepare_store`), the run, and
    where to find it afterwards. A trial's run is a child of its study's parent run."""

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        *,
        experiment: str = "",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.uri, self.experiment_id, self.experiment = uri, experiment_id, experiment
        self.parent_run_id = parent_run_id
        self.tags = {key: value for key, value in (tags or {}).items() if value}
        self.run_id = ""

    @contextlib.contextmanager
    def run(self, name: str, reopen: str | None = None) -> Iterator[RunLogger]:
        """Open the run ``name``, or continue the run ``reopen`` (see :func:`tracked_run`); log
        the spec into it with :meth:`RunLogger.log_spec` once the spec is known."""
        with tracked_run(
            self.uri,
            self.experiment_id,
            name,
            parent_run_id=self.parent_run_id,
            tags=self.tags,
            reopen=reopen,
        ) as logger:
            self.run_id = logger.run_id
            yield logger

    def has_run(self, run_id: str) -> bool:
        """Whether ``run_id`` is a run of this experiment in this store (one to continue)."""
        from mlflow.exceptions import MlflowException

        try:
            with translated(self.uri):
                run = MlflowClient(self.uri).get_run(run_id)
        except (MlflowException, TrackingError):
            return False
        return run.info.experiment_id == self.experiment_id

    def ended(self, status: str) -> str:
        """The clause an interruption message adds about the run's final status."""
        return f"; MLflow run {self.run_id} marked {status}" if self.run_id else ""

    def where(self) -> str:
        """The run's page on a tracking server, or how to find it in the local store."""
        from jepa_lab.track.store import run_url

        url = run_url(self.uri, self.experiment_id, self.run_id)
        return url or f"run {self.run_id} in experiment {self.experiment!r} (see: jepa-lab ui)"


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("jepa-lab", "torch", "timm", "mlflow"):
        try:
            found[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package.replace("-", "_")] = "unknown"
    return found


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
