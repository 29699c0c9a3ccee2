"""A study's local worker processes, as ``jepa-lab run --workers / --gpus`` starts them: each
one's environment (its GPU, or its share of the CPUs), spawning them, following their output under
one progress bar, and stopping them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jepa_lab.cli.tables import trials_bar
from jepa_lab.study.progress import study_progress
from jepa_lab.study.runner import is_complete, n_finished
from jepa_lab.study.storage import STORAGE_ENV
from jepa_lab.track.writer import Terminated

if TYPE_CHECKING:
    from jepa_lab.spec.plan import StudyPlan
    from jepa_lab.study.session import Session
    from jepa_lab.study.storage import Storage
    from jepa_lab.study.trial import WorkerOptions


def assignments(
    workers: int, gpus: list[int] | None, cpus: list[int], visible: str | None = None
) -> list[dict[str, str]]:
    """Environment of each local worker process.

    With GPUs: worker k sees GPU ``gpus[k % len(gpus)]`` alone (``CUDA_VISIBLE_DEVICES``), so
    inside it that GPU is ``cuda:0``. GPU indices count the GPUs this process sees: where
    ``visible`` (this process's own ``CUDA_VISIBLE_DEVICES``) already narrows them, index i is
    its i-th entry. Without GPUs: the CPUs are dealt round-robin (``JEPA_LAB_CPUS``, applied by
    the worker as its affinity) so N workers do not each start one thread per core.
    """
    names = [v.strip() for v in visible.split(",")] if visible else None
    envs = []
    for k in range(workers):
        env = {"JEPA_LAB_WORKER_INDEX": str(k)}
        if gpus:
            gpu = gpus[k % len(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = names[gpu] if names else str(gpu)
        elif workers > 1:
            share = cpus[k::workers] or [cpus[k % len(cpus)]]
            env["JEPA_LAB_CPUS"] = ",".join(map(str, share))
        envs.append(env)
    return envs


def spawn_worker(
    plan: StudyPlan, storage: Storage, uri: str, options: WorkerOptions, env: Mapping[str, str]
) -> Any:
    """``python -m jepa_lab worker STUDY`` as a child process (same process group, so Ctrl-C
    reaches it); storage and tracking URLs travel in the environment, not on the command line
    (where ``ps`` would show a password)."""
    command = [sys.executable, "-m", "jepa_lab", "worker", str(plan.path.resolve())]
    if options.device:
        command += ["--device", options.device]
    if options.data_dir:
        command += ["--data-dir", str(options.data_dir)]
    if options.precision:
        command += ["--precision", options.precision]
    if options.fail_fast:
        command.append("--fail-fast")
    child_env = os.environ | dict(env) | {STORAGE_ENV: storage.url, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen(
        command,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def apply_cpus() -> None:
    """Pin this worker to the CPUs its ``run`` dealt it (see :func:`assignments`)."""
    cpus = os.environ.get("JEPA_LAB_CPUS")
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def run_workers(
    session: Session, options: WorkerOptions, envs: list[dict[str, str]], console: Any, show: bool
) -> int:
    """Run ``envs``' workers to their end, their output prefixed [wK] above one bar over the
    study's trials; 1 if one failed and the study is not complete. With ``fail_fast`` the first
    failed worker stops the others; Ctrl-C and SIGTERM stop them all, then propagate."""
    procs = [
        spawn_worker(
            session.plan, session.storage, session.uri, options, env | {"JEPA_LAB_MANAGED": "1"}
        )
        for env in envs
    ]
    bar = trials_bar(console, show)

    def forward(k: int, stream: Any) -> None:
        for line in stream:
            bar.console.print(f"[w{k}] {line.rstrip()}", highlight=False, markup=False)

    readers = [
        threading.Thread(target=forward, args=(k, p.stdout), daemon=True)
        for k, p in enumerate(procs)
    ]
    for reader in readers:
        reader.start()

    def terminated(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with bar:
            total = session.plan.spec.n_trials
            task = bar.add_task("trials", total=total)
            while any(p.poll() is None for p in procs):
                alive = sum(p.poll() is None for p in procs)
                now = study_progress(session.trials(), total, workers=alive)
                bar.update(task, completed=now.finished, description=f"trials ({now.eta()})")
                if options.fail_fast and any(p.returncode == 1 for p in procs):
                    stop_workers(procs, wait=0)  # the others stop too; a crash elsewhere does not
                time.sleep(1.0)
            bar.update(task, completed=n_finished(session))
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: give them time to retire trials
        stop_workers(procs, wait=30)
        raise
    except Terminated:
        stop_workers(procs, wait=0)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for reader in readers:
            reader.join(timeout=5)
    codes = [p.returncode for p in procs]
    if any(codes):
        console.print(f"worker exit codes: {codes}")
    return 1 if any(codes) and not is_complete(session) else 0


def stop_workers(procs: list[Any], wait: float, grace: float = 60.0) -> None:
    """After ``wait`` seconds, SIGTERM the workers still running (each fails and re-enqueues
    its trial, and ends its MLflow run KILLED), then SIGKILL those left after ``grace``."""
    deadline = time.monotonic() + wait
    for sig, until in ((signal.SIGTERM, deadline), (signal.SIGKILL, deadline + grace)):
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, until - time.monotonic()))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)
    for proc in procs:
        proc.wait()
