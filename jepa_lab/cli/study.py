"""The study commands of ``jepa-lab``: run, worker, status, export, plot.

``register(app)`` adds them to the main Typer app. Heavy modules (Optuna, MLflow, torch, pandas)
load inside each command. Bad input ends in one line per problem and exit 2; a study stopped by
``--fail-fast`` or a crashed worker exits 1; Ctrl-C exits 130 (SIGTERM 143) after the running
trials were failed and re-enqueued, so the same command resumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jepa_lab.cli.options import (
    DataDirOption,
    DeviceOption,
    ExposeOption,
    FailFastOption,
    HostOption,
    PrecisionOption,
    StorageOption,
    StudyArg,
    TrackingUriOption,
    fail,
    store_uri,
)

if TYPE_CHECKING:
    from jepa_lab.spec.plan import StudyPlan
    from jepa_lab.study.session import Session
    from jepa_lab.study.trial import Outcome


def _plan(path: Path) -> StudyPlan:
    from jepa_lab.spec.load import SpecError
    from jepa_lab.spec.plan import is_study_file, load_study

    try:
        if path.is_file() and not is_study_file(path):
            fail(f"{path} is an experiment spec (no base:), not a study file: train it with "
                 f"`jepa-lab train {path}`")  # fmt: skip
        return load_study(path)
    except SpecError as exc:
        fail(exc.messages)


def _session(
    plan: StudyPlan, storage: str | None, tracking_uri: str | None, *, create: bool, stream: int = 0
) -> Session:
    from jepa_lab.study.runner import open_session
    from jepa_lab.study.storage import StudyError, resolve_storage
    from jepa_lab.track.store import TrackingError

    uri = store_uri(tracking_uri, write=create)
    try:
        where = resolve_storage(storage, uri, plan.name)
        if not create and where.kind == "journal" and not Path(where.url).is_file():
            fail(
                f"no study {plan.name!r} yet (no {where.url}): start it with "
                f"`jepa-lab run {plan.path}`, or pass --storage"
            )
        return open_session(plan, where, uri, stream=stream, create=create)
    except (StudyError, TrackingError) as exc:
        fail(str(exc))


def _line(outcome: Outcome, session: Session, eta: str = "") -> str:
    """One finished trial: its number and run name (strategy, differing settings, seed)."""
    named = f"trial {outcome.number}" + (f" {outcome.name}" if outcome.name else "")
    if outcome.state != "COMPLETE":
        return f"{named} {outcome.state}: {outcome.error}{eta}"
    assert outcome.values is not None
    values = "  ".join(
        f"{o.metric}={v:.4g}"
        for o, v in zip(session.plan.spec.objectives, outcome.values, strict=True)
    )
    return f"{named} COMPLETE  {values}  ({outcome.seconds:.1f} s){eta}"


def _parse_gpus(gpus: str | None) -> list[int] | None:
    if gpus is None:
        return None
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        fail(f"--gpus {gpus!r}: expected GPU indices separated by commas, e.g. 0,1,2,3")
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        fail(f"--gpus {gpus!r}: expected distinct GPU indices >= 0, e.g. 0,1,2,3")
    return ids


def _check_gpus(ids: list[int]) -> None:
    """Every listed GPU exists here (before any worker starts)."""
    import torch

    found = torch.cuda.device_count()
    if found == 0:
        fail(f"--gpus {','.join(map(str, ids))}: no CUDA GPU is visible here (drop --gpus to "
             "run on the CPU)")  # fmt: skip
    missing = [i for i in ids if i >= found]
    if missing:
        fail(f"--gpus: no GPU {missing[0]}: {found} visible (indices 0-{found - 1})")


def run(
    study_file: StudyArg,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Local worker processes (default 1; with --gpus one per GPU). On CPUs each "
            "worker is pinned to its share of the cores (JEPA_LAB_CPUS=0,2,... in its "
            "environment, dealt round-robin).",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPU indices, e.g. 0,1,2,3: one worker per GPU, each "
            "seeing only its own (CUDA_VISIBLE_DEVICES).",
            show_default=False,
        ),
    ] = None,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    fail_fast: FailFastOption = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a whole study (grid and/or search) to its total trial count; resumes if re-run.

    Outages: a lost database connection is retried with backoff for $JEPA_LAB_DB_RETRY_S
    seconds (default 300), an unreachable tracking server for $JEPA_LAB_TRACKING_RETRY_S
    (default 300); past that, the worker stops with one line and its trial is retried on resume.
    """
    from rich.console import Console

    from jepa_lab.cli.tables import report
    from jepa_lab.cli.workers import assignments, run_workers
    from jepa_lab.study import runner as st
    from jepa_lab.study.storage import StudyError
    from jepa_lab.study.tracking import set_parent_status
    from jepa_lab.study.trial import WorkerOptions
    from jepa_lab.track.store import TrackingError
    from jepa_lab.track.writer import Terminated

    gpu_ids = _parse_gpus(gpus)
    if gpu_ids:
        if device:
            fail("--gpus picks each worker's device: do not combine it with --device")
        _check_gpus(gpu_ids)
        device = "cuda"  # never a silent fallback to the CPU
    count = workers or (len(gpu_ids) if gpu_ids else 1)
    if progress:  # before Optuna, MLflow and torch load (seconds)
        from jepa_lab.track.redact import redact

        print(
            f"jepa-lab run {study_file}: {count} worker{'s' * (count > 1)}, storage "
            f"{redact(storage or 'beside the tracking store')}, tracking "
            f"{redact(tracking_uri or 'the local store')}; loading...",
            file=sys.stderr,
            flush=True,
        )
    plan = _plan(study_file)
    session = _session(plan, storage, tracking_uri, create=True)
    console = Console(stderr=True)
    console.print(
        f"study {plan.name}: {plan.spec.n_trials} trials, storage {session.storage.shown}, "
        f"{count} worker{'s' * (count > 1)}"
    )
    options = WorkerOptions(
        device=device, data_dir=data_dir, fail_fast=fail_fast, precision=precision,
        share_cores=count == 1 and not gpu_ids,
    )  # fmt: skip
    code = 0
    try:
        set_parent_status(session, "RUNNING")
        if st.is_complete(session):
            console.print("the study is already complete")
        elif count == 1 and not gpu_ids:
            code = _run_here(session, options, console, progress)
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            envs = assignments(count, gpu_ids, sorted(os.sched_getaffinity(0)), visible)
            code = run_workers(session, options, envs, console, progress)
    except KeyboardInterrupt:
        _end(session, "KILLED")
        fail("interrupted: running trials were re-enqueued; run the same command to resume", 130)
    except Terminated:
        _end(session, "KILLED")
        fail("terminated: running trials were re-enqueued; run the same command to resume", 143)
    except (StudyError, TrackingError) as exc:
        _end(session, "FAILED")
        fail(str(exc))
    report(session, console)
    _end(session, "FINISHED" if st.is_complete(session) else ("FAILED" if code else "KILLED"))
    if code:
        raise typer.Exit(code)


def _end(session: Session, status: str) -> None:
    from jepa_lab.study import results as sr
    from jepa_lab.study.tracking import set_parent_status
    from jepa_lab.track.store import TrackingError

    try:
        if status == "FINISHED":
            sr.finalize(session)
        set_parent_status(session, status)
    except TrackingError as exc:
        print(f"warning: study parent run: {exc}", file=sys.stderr)


def _run_here(session: Session, options: Any, console: Any, show: bool) -> int:
    from jepa_lab.cli.tables import trials_bar
    from jepa_lab.data.files import DataError
    from jepa_lab.study import runner as st
    from jepa_lab.study.local import registered
    from jepa_lab.study.progress import study_progress
    from jepa_lab.track.store import TrackingError

    bar = trials_bar(console, show)
    with bar:
        trials = bar.add_task(
            "trials", total=session.plan.spec.n_trials, completed=st.n_finished(session)
        )
        phases: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in phases:
                phases[phase] = bar.add_task(f"  {phase}", total=total)
            bar.update(phases[phase], completed=done, total=total)

        def echo(outcome: Outcome) -> None:
            for task in phases.values():
                bar.remove_task(task)
            phases.clear()
            # itself, about to claim the next trial, and any other worker's running trial
            now = study_progress(session.trials(), session.plan.spec.n_trials, joining=1)
            bar.console.print(_line(outcome, session, now.bracket()), highlight=False)
            bar.update(trials, completed=now.finished, description=f"trials ({now.eta()})")

        try:
            with registered() if options.share_cores else contextlib.nullcontext():
                outcomes = st.work(session, options, echo, progress)
        except (DataError, TrackingError) as exc:
            _end(session, "FAILED")
            fail(str(exc))
    failed = any(o.state == "FAIL" for o in outcomes)
    return 1 if options.fail_fast and failed else 0


def worker(
    study_file: StudyArg,
    index: Annotated[
        int | None,
        typer.Option(
            envvar="JEPA_LAB_WORKER_INDEX",
            min=0,
            help="This worker's number: seeds its sampler stream (default: from the process id).",
            show_default=False,
        ),
    ] = None,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    data_dir: DataDirOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    fail_fast: FailFastOption = False,
) -> None:
    """Join a study as one worker (e.g. from another machine with --storage postgresql://...).

    Outages: a lost database connection is retried with backoff for $JEPA_LAB_DB_RETRY_S
    seconds (default 300), an unreachable tracking server for $JEPA_LAB_TRACKING_RETRY_S
    (default 300); past that, the worker exits with one line (code 2) and its trial is retried
    by the next worker (or by the heartbeat, from another machine).

    CPU threads: JEPA_LAB_CPUS=0,1 pins the worker to those CPUs (run --workers sets it);
    without it, the workers started separately on one host share its cores, each taking
    cores / (its live local workers) threads, recounted at every trial.
    """
    import zlib

    from jepa_lab.cli.workers import apply_cpus
    from jepa_lab.data.files import DataError
    from jepa_lab.study import runner as st
    from jepa_lab.study.local import registered
    from jepa_lab.study.progress import study_progress
    from jepa_lab.study.storage import StudyError, worker_identity
    from jepa_lab.study.tracking import FINALIZED
    from jepa_lab.study.trial import WorkerOptions
    from jepa_lab.track.store import TrackingError
    from jepa_lab.track.writer import Terminated

    apply_cpus()
    plan = _plan(study_file)
    # without --index: one stream per host and process (containers often share a pid)
    stream = index if index is not None else zlib.crc32(worker_identity().encode()) + 1
    session = _session(plan, storage, tracking_uri, create=True, stream=stream)
    pinned = bool(os.environ.get("JEPA_LAB_CPUS"))  # its own CPUs: nothing to share
    options = WorkerOptions(
        device=device, data_dir=data_dir, fail_fast=fail_fast, precision=precision,
        share_cores=not pinned,
    )  # fmt: skip

    def echo(outcome: Outcome) -> None:
        # this worker counts itself among the running: it claims the next trial
        now = study_progress(session.trials(), plan.spec.n_trials, joining=1)
        print(_line(outcome, session, now.bracket()), flush=True)

    try:
        with registered() if options.share_cores else contextlib.nullcontext():
            outcomes = st.work(session, options, echo)
    except (DataError, TrackingError, StudyError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted: the running trial was re-enqueued", 130)
    except Terminated:
        fail("terminated: the running trial was re-enqueued", 143)
    print(f"worker done: {len(outcomes)} trials run here", flush=True)
    if not os.environ.get("JEPA_LAB_MANAGED"):
        with session.lock():
            if st.is_complete(session) and not session.study.user_attrs.get(FINALIZED):
                _end(session, "FINISHED")
                session.study.set_user_attr(FINALIZED, True)
    if fail_fast and any(o.state == "FAIL" for o in outcomes):
        raise typer.Exit(1)


def status(
    study_file: StudyArg,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="The same as JSON on stdout: states, progress and ETA, failures, the front "
            "(rows) with the hypervolume and the export's metadata.",
        ),
    ] = False,
) -> None:
    """Trials by state, the whole study's ETA (the trials left x the mean trial time / the
    workers running trials), the failed trials with their reasons, the Pareto front and its
    hypervolume."""

    from jepa_lab.cli.tables import (
        failures_table,
        front_table,
        stdout_console,
        volume_line,
        warn_precisions,
    )
    from jepa_lab.study import results as sr
    from jepa_lab.study.progress import study_progress

    plan = _plan(study_file)
    session = _session(plan, storage, tracking_uri, create=False)
    found = sr.tables(session)
    front, volume = found.front, found.hypervolume
    counts = sr.counts(session)
    now = study_progress(session.trials(), plan.spec.n_trials)
    failures = sr.failures(session)
    if as_json:
        from jepa_lab.study import export as ex

        meta = sr.export_meta(session, found) | {
            "storage": session.storage.shown,
            "n_trials": plan.spec.n_trials,
            "states": counts,
            "progress": now.to_dict(),
            "eta": now.eta(),
            "failures": failures,
        }
        front_ids = set(front["config_id"]) if not front.empty else set()
        rows = ex.export_table(front, plan.spec.objectives, sr.setting_keys(plan), None, front_ids)
        sys.stdout.write(ex.render(rows, "json", meta) or "")
        return
    out = stdout_console()
    out.print(
        f"study {plan.name} in {session.storage.shown}: {now.finished} of "
        f"{plan.spec.n_trials} trials finished; {now.eta()}",
        highlight=False,
    )
    for state in ("COMPLETE", "RUNNING", "WAITING", "FAIL", "FAIL (retried)", "PRUNED"):
        if counts.get(state):
            out.print(f"  {state:<15} {counts[state]}", highlight=False)
    if failures:
        out.print(failures_table(failures), highlight=False)
    out.print(front_table(front, session))
    out.print(volume_line(session, volume, found.hypervolume_ci), highlight=False)
    warn_precisions(session)
    for warning in sr.warnings(session, found):
        out.print(f"warning: {warning}", highlight=False)


def export(
    study_file: StudyArg,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="csv, md, latex, parquet or json (default: from -o's suffix, else csv).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default: stdout).")
    ] = None,
    all_configs: Annotated[
        bool,
        typer.Option(
            "--all", help="Every configuration and every failed trial with its reason and retry."
        ),
    ] = False,
    front_only: Annotated[
        bool, typer.Option("--front", help="The Pareto front alone (default for a search).")
    ] = False,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="latex: every column (the baselines on validation, kNN, diagnostics, each "
            "paired comparison with its test), as md has them, instead of the page-width table.",
        ),
    ] = False,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """The study's table: a grid study's every configuration (front membership a column), a
    search's Pareto front. md and latex are paper tables (mean ± 95 % CI, accuracies in %,
    differences in pp, human headers, no run ids): latex fits a page's width (configuration,
    n, probe accuracy, its gain over random init with p, the raw-pixel probe, the objectives,
    RankMe; --wide: every column), md has every column. csv, json and parquet keep the logged
    values (fractions) under their metric names for machines. Metadata (json, parquet, the
    caption) names the study, the seeds, the test, and says when the study is unfinished or n
    is unequal."""
    from jepa_lab.cli.tables import volume_line
    from jepa_lab.study import export as ex
    from jepa_lab.study import results as sr

    suffixes = {".csv": "csv", ".md": "md", ".tex": "latex", ".parquet": "parquet", ".json": "json"}
    chosen = fmt or (suffixes.get(output.suffix.lower()) if output else None) or "csv"
    if chosen not in ex.FORMATS:
        fail(f"--format {chosen!r}: expected one of {', '.join(ex.FORMATS)}")
    if chosen == "parquet" and output is None:
        fail("parquet is binary: give an output file with -o FILE.parquet")
    if wide and chosen != "latex":
        fail(f"--wide is for -f latex (the page-width table); {chosen} has every column already")
    plan = _plan(study_file)
    session = _session(plan, storage, tracking_uri, create=False)
    found = sr.tables(session)
    volume = found.hypervolume
    if all_configs and front_only:
        fail("--all and --front: choose one")
    every = all_configs or (plan.spec.grid is not None and plan.spec.search is None)
    chosen_rows = found.front if front_only or not every else found.summary
    front_ids = set(found.front["config_id"]) if not found.front.empty else set()
    objectives, params = plan.spec.objectives, sr.setting_keys(plan)
    if chosen == "latex" and not wide:
        from jepa_lab.study.paper import compact_table

        rows = compact_table(chosen_rows, objectives, params, front_ids)
    elif chosen in ("md", "latex"):
        rows = ex.paper_table(chosen_rows, objectives, params, front_ids)
    else:
        # --all: the failed trials and their reasons too
        rows = ex.export_table(chosen_rows, objectives, params,
                               found.trials if all_configs else None, front_ids)  # fmt: skip
    meta = sr.export_meta(session, found)
    for warning in meta["warnings"]:
        print(f"warning: study {plan.name}: {warning}", file=sys.stderr)
    text = ex.render(rows, chosen, meta, output)
    if text is not None:
        sys.stdout.write(text)
        print(volume_line(session, volume), file=sys.stderr)
    else:
        print(f"wrote {output} ({len(rows)} rows); {volume_line(session, volume)}")


def plot(
    study_file: StudyArg,
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="pareto.png, .svg, .pdf (static) or .html (interactive)."
        ),
    ] = Path("pareto.png"),
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="pareto (configurations and front), curves (probe against images) or drift "
            "(world models: latent drift per horizon step, one curve per arm).",
        ),
    ] = "pareto",
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Plot the configurations (mean with 95 % CI over seeds, each seed faintly) and their
    Pareto front, or --kind curves: the probe curve of every run (accuracy against training
    images, logged every eval.every steps), or --kind drift: a world-model study's latent drift
    (NMSE) per horizon step, one curve per configuration x correction, mean over seeds with its
    95 % CI band. HTML files share one plotly.min.js beside them."""
    from jepa_lab.cli.tables import volume_line
    from jepa_lab.study import export as ex
    from jepa_lab.study import plot as pareto_plot
    from jepa_lab.study import results as sr

    if output.suffix.lower() not in pareto_plot.SUFFIXES:
        fail(f"{output}: plot to a .png, .svg, .pdf or an .html file")
    if kind not in ("pareto", "curves", "drift"):
        fail(f"--kind {kind!r}: expected pareto, curves or drift")
    plan = _plan(study_file)
    session = _session(plan, storage, tracking_uri, create=False)
    found = sr.tables(session)
    summary, front, volume = found.summary, found.front, found.hypervolume
    if summary.empty:
        fail(f"study {plan.name} has no complete trial yet: nothing to plot")
    warnings = sr.warnings(session, found)
    for warning in warnings:
        print(f"warning: study {plan.name}: {warning}", file=sys.stderr)
    if kind == "curves":
        curves = sr.probe_curves(session)
        if not curves:
            fail(f"study {plan.name}: no run logged a probe curve (set eval.every)")
        pareto_plot.plot_curves(curves, output, f"{plan.name}: probe curves")
    elif kind == "drift":
        runs = sr.drift_runs(session)
        if not runs:
            fail(f"study {plan.name}: no run logged drift per horizon step (world-model studies "
                 "do: kind: world_model)")  # fmt: skip
        table = ex.drift_table(runs, sr.setting_keys(plan))
        title = f"{plan.name}: latent drift per horizon step"
        pareto_plot.plot_drift(table, output, title, warnings)
    else:
        pareto_plot.plot(
            summary, front, plan.spec.objectives, output,
            f"{plan.name} ({volume_line(session, volume)})", found.trials, warnings,
        )  # fmt: skip
    print(f"wrote {output}")


def dashboard(
    study_file: StudyArg,
    host: HostOption = "127.0.0.1",
    expose: ExposeOption = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    storage: StorageOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Serve optuna-dashboard on the study's storage until Ctrl-C (read-only for journal files
    and SQLite; safe while the study runs)."""
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is None:
        fail("optuna-dashboard is not installed: pip install 'jepa-lab[dashboard]'")
    if host not in ("127.0.0.1", "localhost", "::1") and not expose:
        fail(
            f"--host {host} would serve the study beyond this machine, and optuna-dashboard has "
            "no authentication: add --expose to do it anyway, or keep the default 127.0.0.1"
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: serving on {host}: anyone who reaches this port can read the study"
            + (" and change it (PostgreSQL storage is writable)" if storage else ""),
            file=sys.stderr,
        )
    plan = _plan(study_file)
    session = _session(plan, storage, tracking_uri, create=False)
    import optuna_dashboard

    writable = session.storage.kind == "postgresql"
    print(
        f"optuna-dashboard: http://{host}:{port}/dashboard/studies  (study {plan.name}, storage "
        f"{session.storage.shown}{'' if writable else ', read-only'}; Ctrl-C stops it)",
        flush=True,
    )
    try:
        optuna_dashboard.run_server(session.optuna_storage, host=host, port=port)
    except KeyboardInterrupt:
        print("stopping optuna-dashboard", file=sys.stderr)
    except OSError as exc:
        fail(f"port {port} on {host}: {exc.strerror or exc}: pick another with --port")


def register(app: typer.Typer) -> None:
    """Add the study commands to ``app``."""
    app.command("run")(run)
    app.command("worker")(worker)
    app.command("status")(status)
    app.command("export")(export)
    app.command("plot")(plot)
    app.command("dashboard")(dashboard)
