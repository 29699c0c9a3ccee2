"""What every command shares, declared once: the options, the one-line failure exit, and the
tracking-store preflight. Heavy modules (MLflow) load only inside :func:`store_uri`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, NoReturn, get_args

import typer

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a spec field: KEY.PATH=VALUE (repeatable)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="JEPA_LAB_DATA", help="Where datasets are looked for first."),
]
DEVICES = r"^(cpu|mps|cuda(:\d+)?)$"  # what every command's --device accepts


def _device(value: str | None) -> str | None:
    import re

    if value is not None and not re.match(DEVICES, value):
        raise typer.BadParameter(f"{value!r}: expected cpu, cuda, cuda:N or mps")
    return value


DeviceOption = Annotated[
    str | None,
    typer.Option(
        help="cpu, cuda, cuda:N or mps (default: auto: CUDA, then MPS, then CPU).",
        show_default=False,
        metavar="cpu|cuda[:N]|mps",
        callback=_device,
    ),
]
# jepa_lab.training.precision.Precision, restated: importing that module would load torch
PrecisionChoice = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionChoice)
PrecisionOption = Annotated[
    PrecisionChoice | None,
    typer.Option(
        envvar="JEPA_LAB_PRECISION",
        help="Autocast of the training step: bf16, fp32, or auto (bf16 on CUDA and on CPUs with "
        "native bf16: AVX512-BF16/AMX, Apple silicon; fp32 elsewhere). SIGReg, the probe and "
        "the loss stay fp32. Default: auto (bf16 is 1.3-1.4x faster on this project's Zen 4 CPUs "
        "and its probe accuracy was within noise of fp32 over 3 seeds on both shipped recipes). "
        "The precision used is recorded with the result.",
        show_default=False,
    ),
]
CompileOption = Annotated[
    bool,
    typer.Option(
        help="torch.compile the model: for CUDA. On CPUs it does not pay for the shipped "
        "recipes: compiled fmnist_ema ran 1233 img/s in fp32 and 1984 in bf16 against 1516 and "
        "2162 eager, before counting its compile time and a recompile for new mask shapes "
        "(docs/results.md, Speed)."
    ),
]
TrackingUriOption = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow store: http(s)://HOST:PORT of a server, or sqlite:///PATH.db "
        "(default: the local store in $JEPA_LAB_HOME or .jepa-lab/).",
        show_default=False,
    ),
]
StudyArg = Annotated[Path, typer.Argument(help="Study file (YAML).", show_default=False)]
StorageOption = Annotated[
    str | None,
    typer.Option(
        envvar="JEPA_LAB_STORAGE",
        help="Optuna storage: postgresql://USER@HOST/DB (workers on several machines), "
        "sqlite:///PATH.db, or PATH.journal (default: a journal file beside the tracking store).",
        show_default=False,
    ),
]
FailFastOption = Annotated[
    bool,
    typer.Option(
        "--fail-fast/--no-fail-fast", help="Stop at the first failed trial instead of going on."
    ),
]


def fail(lines: list[str] | str, code: int = 2) -> NoReturn:
    """Print each problem on its own line to stderr (no markup, no traceback) and exit."""
    from jepa_lab.track.redact import redact_text  # no password of a URL reaches the terminal

    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {redact_text(line)}", file=sys.stderr)
    raise typer.Exit(code)


def store_uri(tracking_uri: str | None, *, write: bool = True, no_track: bool = False) -> str:
    """The resolved tracking URI after a fast preflight of its store (seconds, before the spec
    and torch load: an unreachable server fails at once); a tracking error is one line, exit 2.
    ``write=False`` for commands that only read (a read-only store will do); ``no_track`` for
    the one command (train) whose hint may suggest --no-track."""
    from jepa_lab.track.store import TrackingError, check_store, resolve_uri

    try:
        uri = resolve_uri(tracking_uri)
        check_store(uri, write=write, no_track=no_track)
    except TrackingError as exc:
        fail(str(exc))
    return uri


HostOption = Annotated[
    str, typer.Option(help="Interface to bind (another than loopback needs --expose).")
]
ExposeOption = Annotated[
    bool,
    typer.Option("--expose", help="Allow a --host other than loopback (it has no login)."),
]
