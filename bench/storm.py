"""Kill storm: SIGKILL the whole process group of ``jepa-lab run`` again and again, then check
that a final run finishes the study with nothing lost, nothing run twice and nothing left behind.

A grid study on the synthetic smoke spec (tiny overrides) gets a fresh tracking store and study
(a fresh ``$JEPA_LAB_HOME``; with ``--storage postgresql://...`` a fresh study name), so the first
kills land while the stores are created. Each round starts ``jepa-lab run`` in its own session and
kills its process group at a moment drawn uniformly from ``--window`` (seeded: ``--seed``). Then
a final run, and a re-run, must exit 0. Reported (and written as JSON):

- the exit codes of the final run and the re-run,
- COMPLETE trials (of the grid's cells) and duplicate parameter vectors among them,
- trials left RUNNING or WAITING in Optuna, MLflow runs left RUNNING,
- orphan runs: MLflow runs that are neither the study's parent run nor one of its children, and
  COMPLETE trials without exactly one FINISHED run,
- processes of a killed group still alive a second after the kill, and journal lock files.

    python bench/storm.py --json bench/results/storm.json
    python bench/storm.py --workers 2 --json storm2.json
    python bench/storm.py --storage postgresql://root@127.0.0.1/test --json storm_pg.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "optim.batch_size": 32,
    "data.n_train": 256,
    "data.n_test": 128,
    "eval.probe_train": 128,
    "eval.max_iter": 20,
    "eval.l2_grid": [0.001],
    "eval.baselines": False,
    "log_every": 3,
}
KINDS = ["ema", "sigreg", "none"]


def write_study(folder: Path, name: str, cells: int, steps: int) -> Path:
    """A grid of ``cells`` cells: the three strategies, times seeds when more than three."""
    if cells <= 3:
        grid: dict[str, Any] = {"strategy.kind": KINDS[:cells]}
        seeds = None
    else:
        if cells % 3:
            raise SystemExit(f"error: --cells {cells}: use 1, 2, 3 or a multiple of 3")
        grid, seeds = {"strategy.kind": KINDS}, list(range(cells // 3))
    data: dict[str, Any] = {
        "name": name,
        "base": str(REPO / "studies" / "smoke.yaml"),
        "overrides": {**TINY, "optim.steps": steps},
        "grid": grid,
    }
    if seeds:
        data["seeds"] = seeds
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def command(path: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "jepa_lab", "run", str(path), "--no-progress"]
    cmd += ["--workers", str(args.workers), "--device", "cpu"]
    if args.storage:
        cmd += ["--storage", args.storage]
    return cmd


def run_once(
    path: Path, args: argparse.Namespace, env: dict[str, str], folder: Path
) -> subprocess.CompletedProcess[str]:
    """One ``jepa-lab run`` to its end; past ``--timeout`` its whole group is killed."""
    proc = subprocess.Popen(
        command(path, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=folder, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\nstorm: killed after --timeout {args.timeout:g} s"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def storm(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        folder = Path(tmp)
        name = f"storm_{uuid.uuid4().hex[:8]}" if args.storage else "storm"
        path = write_study(folder, name, args.cells, args.steps)
        env = {**os.environ, "JEPA_LAB_HOME": str(folder / "home"), "PYTHONUNBUFFERED": "1"}
        for key in ("MLFLOW_TRACKING_URI", "JEPA_LAB_STORAGE", "JEPA_LAB_WORKER_INDEX"):
            env.pop(key, None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        began = time.monotonic()
        kills, survivors, early = [], [], []
        for round_ in range(args.kills):
            at = rng.uniform(*args.window)
            proc = subprocess.Popen(
                command(path, args),
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=folder,
            )
            try:
                proc.wait(timeout=at)
                early.append({"round": round_, "exit_code": proc.returncode})  # ended by itself
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills.append(round(at, 3))
            time.sleep(1.0)
            survivors += group_alive(proc.pid)
            for pid in group_alive(proc.pid):  # do not leave them to the next round
                os.kill(pid, signal.SIGKILL)
        storm_s = time.monotonic() - began
        final = run_once(path, args, env, folder)
        rerun = run_once(path, args, env, folder) if args.rerun else None
        wall_s = time.monotonic() - began
        checks = inspect(folder / "home", name, args.storage)
    report = {
        "kills": len(kills),
        "kill_times_s": kills,
        "ended_before_kill": early,
        "final_exit_code": final.returncode,
        "rerun_exit_code": rerun.returncode if rerun else None,
        **checks,
        "cells": args.cells,
        "surviving_processes": len(survivors),
        "storm_s": round(storm_s, 1),
        "wall_s": round(wall_s, 1),
        "final_stderr_tail": final.stderr[-2000:] if final.returncode else "",
    }
    return report


def inspect(home: Path, name: str, storage: str | None) -> dict[str, Any]:
    """The study's state in Optuna and MLflow after the storm."""
    import optuna
    from mlflow.tracking import MlflowClient

    from jepa_lab.study.storage import resolve_storage
    from jepa_lab.study.tracking import PARENT, RUN_ID

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    where = resolve_storage(storage, uri, name)
    if where.kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        backend: Any = JournalStorage(JournalFileBackend(where.url))
    else:
        backend = where.url
    trials = optuna.load_study(study_name=name, storage=backend).get_trials()
    study = optuna.load_study(study_name=name, storage=backend)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    # a grid cell is its parameters and its seed (a user attribute: no searched parameter)
    vectors = [(tuple(sorted(t.params.items())), t.user_attrs.get("jepa_lab.seed")) for t in done]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=10_000) if experiment else []
    parent = study.user_attrs.get(PARENT)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    orphans = [r for r in runs if r.info.run_id != parent and r not in children]
    by_run = {r.info.run_id: r for r in children}
    unmatched = [
        t.number
        for t in done
        if t.user_attrs.get(RUN_ID) not in by_run
        or by_run[t.user_attrs[RUN_ID]].info.status != "FINISHED"
        or sum(r.data.tags.get("jepa_lab.trial") == str(t.number) for r in children) != 1
    ]
    return {
        "complete": len(done),
        "duplicates": len(vectors) - len(set(vectors)),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "optuna_running_left": sum(t.state.name in ("RUNNING", "WAITING") for t in trials),
        "mlflow_running_left": sum(r.info.status == "RUNNING" for r in runs),
        "orphan_runs": len(orphans) + len(unmatched),
        "fail_reasons_missing": sum(
            t.state.name == "FAIL" and not t.system_attrs.get("fail_reason") for t in trials
        ),
        "lock_files": len(list((home / "studies").glob("*.lock"))),
    }


def ok(report: dict[str, Any]) -> bool:
    return (
        report["final_exit_code"] == 0
        and report["rerun_exit_code"] in (0, None)
        and report["complete"] == report["cells"]
        and not any(
            report[k]
            for k in (
                "duplicates",
                "optuna_running_left",
                "mlflow_running_left",
                "orphan_runs",
                "surviving_processes",
                "lock_files",
            )
        )
    )


def print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--cells", type=int, default=9, help="grid cells (1-3 or 3k)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="training steps per trial")
    parser.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=[2.0, 16.0],
        metavar=("FROM", "TO"),
        help="kill moments, seconds after the start",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--storage", default=None, help="e.g. postgresql://root@127.0.0.1/test")
    parser.add_argument("--timeout", type=float, default=600, help="final run's limit (s)")
    parser.add_argument("--rerun", action=argparse.BooleanOptionalAction, default=True,
                        help="run once more after the final run (must exit 0 too)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = storm(args)
    storage = "postgresql" if args.storage else "journal"
    report = {"workers": args.workers, "storage": storage, "seed": args.seed, **report}
    print_table(
        [
            ("storage, workers", f"{storage}, {args.workers}"),
            ("kills (window s)", f"{report['kills']} ({args.window[0]:g}-{args.window[1]:g})"),
            ("ended before kill", len(report["ended_before_kill"])),
            ("final / re-run exit", f"{report['final_exit_code']} / {report['rerun_exit_code']}"),
            ("COMPLETE", f"{report['complete']} of {args.cells}"),
            ("duplicates", report["duplicates"]),
            ("FAIL (retried)", report["failed"]),
            ("FAIL without fail_reason", report["fail_reasons_missing"]),
            ("RUNNING left (Optuna)", report["optuna_running_left"]),
            ("RUNNING left (MLflow)", report["mlflow_running_left"]),
            ("orphan runs", report["orphan_runs"]),
            ("surviving processes", report["surviving_processes"]),
            ("lock files", report["lock_files"]),
            ("wall time", f"{report['wall_s']} s (storm {report['storm_s']} s)"),
            ("verdict", "ok" if ok(report) else "FAILED"),
        ]
    )
    if report["final_stderr_tail"]:
        print(report["final_stderr_tail"], file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
