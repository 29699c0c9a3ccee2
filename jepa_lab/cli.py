"""The ``jepa-lab`` command line. Heavy modules (torch, MLflow, Optuna) load inside commands,
so ``jepa-lab --help`` stays fast. Bad input ends in one line per problem on stderr and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from jepa_lab.spec import ExperimentSpec
    from jepa_lab.train import TrainResult

app = typer.Typer(
    name="jepa-lab",
    help="Ablations of JEPA collapse prevention (EMA, SIGReg, none), tracked and searched.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a spec field: KEY.PATH=VALUE (repeatable)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="JEPA_LAB_DATA", help="Where datasets are looked for first."),
]


def fail(lines: list[str] | str, code: int = 2) -> NoReturn:
    """Print each problem on its own line to stderr (no markup, no traceback) and exit."""
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    raise typer.Exit(code)


def load_spec(path: Path, overrides: list[str] | None) -> ExperimentSpec:
    from jepa_lab.spec import ExperimentSpec
    from jepa_lab.specfile import SpecError, load

    try:
        return load(ExperimentSpec, path, overrides or [])
    except SpecError as exc:
        fail(exc.messages)


def summary_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """Human-readable rows of the key metrics of one run."""

    def pct(key: str) -> str:
        return f"{100 * metrics[key]:.2f} %" if key in metrics else "-"

    def num(key: str, fmt: str = ".4g") -> str:
        return format(metrics[key], fmt) if key in metrics else "-"

    rows = [
        ("linear probe (test)", pct("eval/probe_acc")),
        ("kNN (test)", pct("eval/knn_acc")),
        ("random-init probe", pct("eval/random_probe_acc")),
        ("raw-pixel probe", pct("eval/pixel_probe_acc")),
        ("gain over random init", pct("eval/gain_over_random")),
        ("RankMe", num("diag/rankme")),
        ("per-dim std", num("diag/std")),
        ("SIGReg statistic", num("diag/sigreg")),
        ("held-out prediction loss", num("diag/pred_loss")),
        ("positional share", num("diag/positional_share", ".3f")),
    ]
    if "eval/gain_over_random" in metrics and metrics["eval/gain_over_random"] <= 0:
        rows.append(("verdict", "NOT better than its random-init baseline"))
    return rows


def print_summary(result: TrainResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.spec.name} ({result.spec.strategy.kind}, seed {result.spec.seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(result.metrics):
        table.add_row(name, value)
    table.add_row("steps", str(result.steps))
    table.add_row("training time", f"{result.train_seconds:.1f} s")
    table.add_row("throughput", f"{result.images_per_second:.0f} img/s")
    Console().print(table)


def result_json(result: TrainResult) -> dict[str, Any]:
    return {
        "spec": result.spec.to_dict(),
        "spec_digest": result.spec.digest(),
        "config_id": result.spec.digest(with_seed=False),
        "steps": result.steps,
        "completed": result.completed,
        "metrics": result.metrics,
        "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second,
        "history": result.history,
        "provenance": result.provenance,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(path)


@app.command()
def train(
    spec_file: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")],
    overrides: SetOption = None,
    data_dir: DataDirOption = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps (default: auto).")] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint and result.json (default runs/NAME-DIGEST).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run directory's checkpoint.")] = False,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = False,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write result here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pre-train one experiment, evaluate it and print a summary table."""
    spec = load_spec(spec_file, overrides)
    from jepa_lab.checkpoint import CheckpointError
    from jepa_lab.data import DataError
    from jepa_lab.reporting import ProgressReporter
    from jepa_lab.train import TrainingError, TrainOptions
    from jepa_lab.train import train as run_training

    run_dir = run_dir or Path("runs") / f"{spec.name}-{spec.digest()}"
    options = TrainOptions(
        device=device, data_dir=data_dir, run_dir=run_dir, resume=resume, compile=compile,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip
    try:
        with ProgressReporter(enabled=progress) as reporter:
            result = run_training(spec, log=reporter.log, progress=reporter.progress, options=options)
    except (DataError, CheckpointError) as exc:
        fail(str(exc))
    except TrainingError as exc:
        fail(str(exc), code=1)
    data = result_json(result)
    write_json(run_dir / "result.json", data)
    if json_out is not None:
        write_json(json_out, data)
    print_summary(result)
    print(f"result: {run_dir / 'result.json'}")


@app.command()
def validate(
    spec_files: Annotated[list[Path], typer.Argument(help="Spec files to check.")],
) -> None:
    """Check spec files; print FILE:LINE errors and exit 2 if any is invalid."""
    from jepa_lab.spec import ExperimentSpec
    from jepa_lab.specfile import SpecError, load

    problems: list[str] = []
    for path in spec_files:
        try:
            load(ExperimentSpec, path)
        except SpecError as exc:
            problems.extend(exc.messages)
        else:
            print(f"ok: {path}")
    if problems:
        fail(problems)


@app.command()
def schema() -> None:
    """Print the JSON Schema of experiment specs (for editor completion)."""
    from jepa_lab.spec import ExperimentSpec

    print(json.dumps(ExperimentSpec.model_json_schema(by_alias=True), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
