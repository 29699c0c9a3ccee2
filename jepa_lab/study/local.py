"""The jepa-lab workers of this host, so that workers started separately share its cores.

Each unpinned worker registers a small file (named by pid and start time) in a per-user runtime
folder; at each trial start it counts the live ones (removing those of dead processes) and takes
``cores // live`` torch threads, at least 1. Workers that ``run --workers N`` pinned to their own
CPUs (``JEPA_LAB_CPUS``) own those cores and do not register.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jepa_lab.study.storage import worker_alive, worker_identity

RUNTIME_ENV = "JEPA_LAB_RUNTIME_DIR"
LOAD_WARNING_ENV = "JEPA_LAB_LOAD_WARNING"
_warned = False


def registry_folder() -> Path:
    """``$JEPA_LAB_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/jepa-lab``, else a per-user folder in
    the temporary directory; with ``workers/`` below it. Local to the host: no shared disk."""
    base = os.environ.get(RUNTIME_ENV)
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        user = os.getuid() if hasattr(os, "getuid") else "user"
        base = str(Path(xdg) / "jepa-lab") if xdg else f"{tempfile.gettempdir()}/jepa-lab-{user}"
    return Path(base) / "workers"


def _entry(folder: Path) -> Path:
    _, pid, start = worker_identity().split(":")
    return folder / f"{pid}-{start}"


@contextlib.contextmanager
def registered(folder: Path | None = None) -> Iterator[Path]:
    """Register this process as a local worker for the duration of the block."""
    folder = folder or registry_folder()
    folder.mkdir(parents=True, exist_ok=True)
    entry = _entry(folder)
    entry.write_text(worker_identity())
    try:
        yield entry
    finally:
        entry.unlink(missing_ok=True)


def live_workers(folder: Path | None = None) -> int:
    """How many registered workers of this host still run; the entries of dead ones go."""
    folder = folder or registry_folder()
    count = 0
    for entry in folder.glob("*-*") if folder.is_dir() else []:
        try:
            identity = entry.read_text().strip()
        except OSError:  # removed meanwhile by its worker or another's cleanup
            continue
        alive = worker_alive(identity)
        if alive:
            count += 1
        elif alive is False:
            entry.unlink(missing_ok=True)
    return count


def cores() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_share(folder: Path | None = None) -> int:
    """Torch threads for this worker: its cores over the live local workers, at least 1."""
    return max(1, cores() // max(1, live_workers(folder)))


def load_warning() -> str | None:
    """One line when the 1-minute load average exceeds this host's cores, else None (and None
    with ``JEPA_LAB_LOAD_WARNING=0``, e.g. for tests that compare stderr exactly)."""
    if not hasattr(os, "getloadavg") or os.environ.get(LOAD_WARNING_ENV) == "0":
        return None
    load, host = os.getloadavg()[0], os.cpu_count() or 1
    if load <= host:
        return None
    return (
        f"warning: load average {load:.1f} exceeds the {host} cores of this host: timings "
        "and throughput (img/s) are not comparable with those of a quiet machine"
    )


def warn_if_loaded() -> None:
    """Print :func:`load_warning` on stderr, once per process."""
    global _warned
    if _warned:
        return
    warning = load_warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)
        _warned = True
