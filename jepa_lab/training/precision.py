"""Precision, a machine setting like the device: which autocast the training step runs under.

The default (None) is ``auto``: bf16 autocast on CUDA and on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX on x86, Apple silicon), fp32 elsewhere. bf16 became the CPU default once it
measured no worse than fp32 over 3 seeds on both shipped recipes (docs/results.md, "Speed").
SIGReg, the probe and the loss reduction stay fp32 whatever is chosen; the precision used is
recorded with every result.
"""

from __future__ import annotations

import contextlib
import platform
import sys
from pathlib import Path
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PRECISION_ENV = "JEPA_LAB_PRECISION"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_TORCH_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so optional


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively rather than by converting to fp32 and back:
    AVX512-BF16 or AMX on x86 (torch's own cpuinfo probe, else the Linux CPU flags), or Apple
    silicon."""
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    probes = [getattr(torch.cpu, name, None) for name in _TORCH_PROBES]
    if any(probe is not None and probe() for probe in probes):
        return True
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in text.split() for flag in _BF16_FLAGS)


def resolve_precision(requested: str | None, device: torch.device) -> Literal["fp32", "bf16"]:
    """The precision ``requested`` (auto, fp32, bf16) means on ``device``.

    None is the default, ``auto``. fp32 is the step's numerics from before this setting existed.
    """
    if requested is None:
        requested = "auto"
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return "bf16" if native else "fp32"
    return "bf16" if requested == "bf16" else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The training step's autocast for a resolved precision. fp32 opens no context at all, so
    it is exactly the step without this setting (and a caller's own autocast still applies)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
