"""What produced a result: git commit and dirty flag, package versions, device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None, str]:
    """(commit, dirty, diff against HEAD) of the checkout jepa_lab runs from; None outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None, ""
    diff = _git("diff", "HEAD") or ""
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    return commit.strip(), bool(status.strip()), diff


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def provenance(device: torch.device, precision: str = "fp32") -> dict[str, str | bool | None]:
    """The facts every result carries beside its resolved spec; ``precision`` is the resolved
    one (fp32, bf16) the training step ran at."""
    commit, dirty, _ = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "jepa_lab": _version("jepa-lab"),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": str(torch.get_num_threads()),
        "precision": precision,
    }
