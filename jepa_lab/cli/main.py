"""The ``jepa-lab`` command line. Heavy modules (torch, MLflow, Optuna) load inside commands,
so ``jepa-lab --help`` stays fast. Bad input ends in one line per problem on stderr and exit 2."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import jepa_lab.cli.help  # noqa: F401  (flags show no <bool> on --help)
from jepa_lab.cli.bench import register as register_bench
from jepa_lab.cli.options import (
    CompileOption,
    DataDirOption,
    DeviceOption,
    ExposeOption,
    HostOption,
    PrecisionOption,
    SetOption,
    TrackingUriOption,
    fail,
    store_uri,
)
from jepa_lab.cli.study import register

if TYPE_CHECKING:
    from jepa_lab.spec.load import AnySpec

app = typer.Typer(
    name="jepa-lab",
    help="Ablations of JEPA collapse prevention (EMA, SIGReg, none), tracked and searched.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            print(f"jepa-lab {metadata.version('jepa-lab')}")
        except metadata.PackageNotFoundError:  # run from a checkout that is not installed
            print("jepa-lab (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


runs_app = typer.Typer(help="Browse the runs logged to MLflow.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def load_spec(path: Path, overrides: list[str] | None) -> AnySpec:
    from jepa_lab.spec.load import SpecError, load_any
    from jepa_lab.spec.plan import is_study_file

    try:
        if is_study_file(path):
            fail(f"{path} is a study file (it has base:), not an experiment spec: run it with "
                 f"`jepa-lab run {path}`")  # fmt: skip
        return load_any(path, overrides or [])
    except SpecError as exc:
        fail(exc.messages)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)


def spec_from_run(uri: str, run_id: str, overrides: list[str] | None) -> AnySpec:
    """The spec a logged run resolved, with ``overrides`` merged in."""
    from jepa_lab.spec.load import Source, SpecError, apply_overrides, validate_any
    from jepa_lab.track.reader import spec_of_run
    from jepa_lab.track.store import TrackingError

    try:
        data = spec_of_run(uri, run_id)
    except TrackingError as exc:
        fail(str(exc))
    source = Source(f"run {run_id}:spec.yaml")
    try:
        return validate_any(apply_overrides(data, overrides or [], source), source)
    except SpecError as exc:
        fail(exc.messages)


@app.command()
def train(
    spec_file: Annotated[
        Path | None, typer.Argument(help="Experiment spec (YAML); not with --from-run.")
    ] = None,
    overrides: SetOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint and result.json (default runs/NAME-DIGEST).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the run directory's checkpoint.")
    ] = False,
    compile: CompileOption = False,
    precision: PrecisionOption = None,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints.")] = 0,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the result here ('-': stdout; the summary then goes to stderr).",
            metavar="FILE|-",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    tracking_uri: TrackingUriOption = None,
    track: Annotated[
        bool, typer.Option("--track/--no-track", help="Log the run to MLflow (default: on).")
    ] = True,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment (default: the spec's name).")
    ] = None,
    from_run: Annotated[
        str | None,
        typer.Option("--from-run", help="Run again the exact spec of this logged MLflow run."),
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="Data-parallel processes on this machine (torchrun).")
    ] = 1,
) -> None:
    """Pre-train one experiment, evaluate it, print a summary table and log it to MLflow."""
    if (spec_file is None) == (from_run is None):
        fail("give a SPEC_FILE or --from-run RUN_ID (exactly one)")
    if progress and os.environ.get("RANK", "0") == "0":  # before torch and MLflow load (seconds)
        from jepa_lab.track.redact import redact

        where = redact(tracking_uri or "the local store") if track else "no tracking"
        print(
            f"jepa-lab train {spec_file or 'run ' + str(from_run)}: device {device or 'auto'}, "
            f"{where}; loading...",
            file=sys.stderr,
            flush=True,
        )
    from jepa_lab.cli.launch import launch, under_launcher, without_option

    if nproc > 1 and not under_launcher():
        raise typer.Exit(launch(nproc, without_option(sys.argv[1:], "--nproc")))
    main_rank = os.environ.get("RANK", "0") == "0"  # only rank 0 logs, writes and prints
    track = track and main_rank
    uri = store_uri(tracking_uri, write=track, no_track=True) if track or from_run else None
    if from_run is not None:
        assert uri is not None
        spec = spec_from_run(uri, from_run, overrides)
    else:
        assert spec_file is not None
        spec = load_spec(spec_file, overrides)
    from jepa_lab.eval.deploy import DeployError, resolve_backend
    from jepa_lab.spec.experiment import ExperimentSpec

    deploy = spec.eval.deploy if isinstance(spec, ExperimentSpec) else None
    if deploy is not None and deploy.enabled:  # a missing INT8 backend: one line, exit 2
        try:
            resolve_backend(deploy.backend, "cuda" if device == "cuda" else "cpu")
        except DeployError as exc:
            fail(str(exc))
    from jepa_lab.cli.reporting import ProgressReporter, print_summary
    from jepa_lab.data.files import DataError
    from jepa_lab.study.local import warn_if_loaded
    from jepa_lab.training.checkpoint import CheckpointError
    from jepa_lab.training.loop import TrainingError, TrainOptions
    from jepa_lab.training.loop import train as run_training

    warn_if_loaded()  # a busy host: its img/s are not comparable
    explicit_dir = run_dir is not None
    run_dir = run_dir or Path("runs") / f"{spec.name}-{spec.digest()}"
    if not resume and main_rank and _holds_run(run_dir):
        fail(
            f"{run_dir} already holds a run of this spec: continue it with --resume, or keep "
            f"both with --run-dir {'ANOTHER_DIR' if explicit_dir else str(run_dir) + '-2'}"
        )
    options = TrainOptions(
        device=device, data_dir=data_dir, run_dir=run_dir, resume=resume, compile=compile,
        checkpoint_every=checkpoint_every, precision=precision,
    )  # fmt: skip
    stopped: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
    failed: tuple[type[BaseException], ...] = (DataError, CheckpointError, DeployError)
    tracking, reopen = None, None
    if track and uri:
        from jepa_lab.track.names import train_run_name
        from jepa_lab.track.store import TrackingError, prepare_store
        from jepa_lab.track.writer import Terminated, Tracking

        stopped, failed = (*stopped, Terminated), (*failed, TrackingError)
        tags = {"jepa_lab.from_run": from_run or "", "jepa_lab.resumed": str(resume).lower()}
        try:
            name = experiment or spec.name
            tracking = Tracking(uri, prepare_store(uri, name), experiment=name, tags=tags)
            if resume:
                reopen = _run_to_continue(tracking, run_dir)
        except (TrackingError, CheckpointError) as exc:
            fail(str(exc))
    try:
        with (
            tracking.run(train_run_name(spec), reopen=reopen)
            if tracking
            else contextlib.nullcontext() as logger,
            ProgressReporter(enabled=progress and main_rank) as reporter,
        ):
            if logger is not None:
                from jepa_lab.track.rundir import record_run

                assert tracking is not None
                record_run(run_dir, tracking.uri, tracking.experiment_id, logger.run_id)
                logger.log_spec(spec)
                options = dataclasses.replace(options, run_id=logger.run_id)

            def log(metrics: Mapping[str, float], step: int) -> None:
                reporter.log(metrics, step)
                if logger is not None:
                    logger.log(metrics, step)

            result = run_training(spec, log=log, progress=reporter.progress, options=options)
            if not main_rank:
                return
            data = result.to_dict()
            write_json(run_dir / "result.json", data)
            if logger is not None:
                reporter.progress("logging", 0, 1)
                logger.log_result(result, run_dir)
                reporter.progress("logging", 1, 1)
    except failed as exc:
        fail(str(exc))
    except TrainingError as exc:
        fail(str(exc), code=1)
    except stopped as exc:
        interrupt = isinstance(exc, KeyboardInterrupt)
        ended = tracking.ended("KILLED") if tracking else ""
        fail(
            f"{'interrupted' if interrupt else 'terminated'}{ended}; {_resume_hint(run_dir)}",
            code=130 if interrupt else 143,
        )
    to_stdout = json_out is not None and str(json_out) == "-"
    if to_stdout:
        print(json.dumps(data, indent=2), flush=True)
    elif json_out is not None:
        write_json(json_out, data)
    out = sys.stderr if to_stdout else sys.stdout  # stdout is the JSON alone
    print_summary(result, stderr=to_stdout)
    print(f"result: {run_dir / 'result.json'}", file=out)
    if tracking is not None:
        print(f"mlflow: {tracking.where()}", file=out)


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").is_file() or (run_dir / "result.json").is_file()


def _run_to_continue(tracking: Any, run_dir: Path) -> str | None:
    """The MLflow run a resumed training continues: the one its checkpoint names, if it is in
    this experiment (else a new run, with a warning)."""
    from jepa_lab.training.checkpoint import saved_run_id

    run_id = saved_run_id(run_dir / "checkpoint.pt")
    if run_id is None:
        return None
    if not tracking.has_run(run_id):
        print(
            f"warning: the checkpoint's MLflow run {run_id} is not in experiment "
            f"{tracking.experiment!r} of this store: logging the rest to a new run",
            file=sys.stderr,
        )
        return None
    return run_id


def _resume_hint(run_dir: Path) -> str:
    """How to continue an interrupted ``train``: its own command line with --resume."""
    import shlex

    if not (run_dir / "checkpoint.pt").is_file():
        return "no checkpoint yet: add --checkpoint-every N to make a run resumable"
    args = [a for a in sys.argv[1:] if a != "--resume"]
    if "--run-dir" not in args and not any(a.startswith("--run-dir=") for a in args):
        args += ["--run-dir", str(run_dir)]
    return f"continue with: {shlex.join(['jepa-lab', *args, '--resume'])}"


@app.command()
def validate(
    spec_files: Annotated[list[Path], typer.Argument(help="Spec files to check.")],
) -> None:
    """Check experiment and study files; print FILE:LINE errors and exit 2 if any is invalid."""
    from jepa_lab.spec.load import SpecError, load_any
    from jepa_lab.spec.plan import is_study_file, load_study

    problems: list[str] = []
    for path in spec_files:
        try:
            if is_study_file(path):
                load_study(path)
            else:
                load_any(path)
        except SpecError as exc:
            problems.extend(exc.messages)
        else:
            print(f"ok: {path}")
    if problems:
        fail(problems)


@app.command()
def ui(
    host: HostOption = "127.0.0.1",
    expose: ExposeOption = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5000,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(help="Store to browse (default: the local store).", show_default=False),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server worker processes.")] = 1,
) -> None:
    """Serve the MLflow UI on the project's store until Ctrl-C."""
    import ipaddress
    import signal
    import socket
    import tempfile

    from jepa_lab.track import server as mlflow_server
    from jepa_lab.track import store

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not expose:
        fail(
            f"--host {host} would serve the MLflow UI beyond this machine, and MLflow has no "
            "authentication: add --expose to do it anyway, or keep the default 127.0.0.1"
        )
    if not loopback:
        print(
            f"warning: serving on {host}: MLflow has no authentication, so anyone who reaches "
            "this port can read and change every run",
            file=sys.stderr,
        )
    with socket.socket() as probe:
        probe.settimeout(1)
        try:
            taken = probe.connect_ex((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port))
        except OSError as exc:  # an unknown host name
            fail(f"--host {host}: {exc}: give an address or a name this machine resolves")
        if taken == 0:
            fail(f"port {port} on {host} is already in use: pick another with --port")
    uri = backend_store_uri or store.default_uri()
    if uri.startswith("sqlite:"):
        uri = store.resolve_uri(uri)
    log = store.home() / "mlflow-server.log"
    if not os.access(next(p for p in (log.parent, *log.parents) if p.exists()), os.W_OK):
        log = Path(tempfile.mkdtemp(prefix="jepa-lab-ui-")) / log.name  # a read-only store
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    try:
        server = mlflow_server.start_server(uri, host, port, workers, log)
    except store.TrackingError as exc:
        fail(str(exc))

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # `kill` stops the server as Ctrl-C does
    try:
        _warn_if_moved(uri)
        mlflow_server.wait_for_server(url, server, timeout=120, log=log)
        print(f"MLflow UI: {url}  (store: {store.redact(uri)}; Ctrl-C stops it)", flush=True)
        server.wait()
    except store.TrackingError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("stopping the MLflow server", file=sys.stderr)
    finally:
        mlflow_server.stop_server(server)
    if server.returncode not in (0, -2, -15, 130, 143):
        fail(f"mlflow server exited with code {server.returncode} (log: {log})")


def _warn_if_moved(uri: str) -> None:
    """Warn when the store was moved and, read-only, could not follow: the UI's artifact pages
    look where it was (its runs, params and metrics show; jepa-lab's own readers find the
    artifacts where the store is)."""
    from jepa_lab.track.location import moved
    from jepa_lab.track.store import sqlite_path, translated

    if not uri.startswith("sqlite:"):
        return
    with translated(uri):
        roots = moved(sqlite_path(uri))
    if roots is not None:
        print(
            f"warning: this store was moved from {roots[0]} and is read-only here: the UI shows "
            "its runs, but looks for their artifacts where it was (make it writable and start "
            "`jepa-lab ui` again: their locations are then rewritten)",
            file=sys.stderr,
        )


@runs_app.command("list")
def runs_list(
    experiment: Annotated[
        str | None, typer.Option(help="Only this experiment (default: all).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Most recent runs shown.")] = 20,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """A table of the most recent runs and their key metrics."""
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from jepa_lab.track.reader import recent_runs
    from jepa_lab.track.store import TrackingError, redact

    uri = store_uri(tracking_uri, write=False)
    try:
        runs = recent_runs(uri, experiment, limit)
    except TrackingError as exc:
        fail(str(exc))
    table = Table(title=f"runs in {experiment or 'all experiments'} ({redact(uri)})")
    for column in ("run", "id", "status", "strategy", "seed"):
        table.add_column(column, no_wrap=True)
    for column in ("probe", "random probe", "RankMe", "started"):
        table.add_column(column, justify="right", no_wrap=True)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    for run in runs:
        metrics = run.metrics
        table.add_row(
            ("└ " if run.parent_run_id else "") + run.name,
            run.run_id,
            run.status,
            run.tags.get("jepa_lab.strategy", "-"),
            run.tags.get("jepa_lab.seed", "-"),
            pct(metrics.get("eval/probe_acc")),
            pct(metrics.get("eval/random_probe_acc")),
            f"{metrics['diag/rankme']:.4g}" if "diag/rankme" in metrics else "-",
            datetime.fromtimestamp(run.start_time).strftime("%m-%d %H:%M"),
        )
    console = Console()
    if not console.is_terminal:  # piped: never cut the run ids that --from-run needs
        console = Console(width=250)
    console.print(table)


@app.command()
def schema(
    world: Annotated[
        bool, typer.Option("--world", help="World-model specs (kind: world_model) instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of experiment specs (for editor completion)."""
    from jepa_lab.spec.experiment import ExperimentSpec
    from jepa_lab.spec.world import WorldSpec

    model = WorldSpec if world else ExperimentSpec
    print(json.dumps(model.model_json_schema(by_alias=True), indent=2))


register(app)
register_bench(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
