"""``--nproc N``: re-run the same command under PyTorch's elastic launcher with N local ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence


def under_launcher() -> bool:
    """True inside a torchrun worker (the launcher sets WORLD_SIZE and friends)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m jepa_lab ARGV`` as ``nproc`` ranks on this machine; returns the exit code.

    torchrun's standalone mode picks a free rendezvous port; when a rank fails it stops the
    others and reports that rank's error.
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--monitor-interval=0.5", "-m", "jepa_lab", *argv,
    ]  # fmt: skip
    return subprocess.call(command)
