"""Training-step throughput of shipped specs: images/s, model FLOPs per image, achieved FLOP/s, MFU.

Measures the whole step the trainer runs (batch + augmentation + masks, target forward, context
forward/backward, predictor, optimiser, EMA or SIGReg) with the trainer's own functions. Images/s
is the median over timed windows after warm-up, synchronised with the device only at window ends.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one step; the peak is measured
in the same run (a large fp32 matmul on CPU, a bf16 matmul on CUDA), so MFU = achieved / peak on
this very machine.

``--peer lightly`` also measures the same I-JEPA step built from lightly 1.6's timm modules
(bench/harness.py says how it is matched: shapes, images, masks, loss, AdamW, EMA). The two run in
alternating windows (ours, lightly, ours, lightly, ...) over the same batches, so a change in
machine load hits both alike; ``ours_over_peer`` is the median of the per-round ratios. The peer
is off by default. Asked for without lightly installed (``pip install 'jepa-lab[bench]'``), the
script prints one error line and exits 2 before measuring anything; specs lightly cannot express
(SIGReg, no strategy, MSE loss) are measured alone, with the reason under ``peer.skipped``.

    python bench/throughput.py --json bench/results/cpu.json
    python bench/throughput.py studies/fmnist_ema.yaml --peer lightly --json peer.json
    python bench/throughput.py studies/cifar10_ijepa.yaml --device cuda --compile --json gpu.json
    python bench/throughput.py --precisions fp32,bf16 --peer lightly --json bench/results/bf16.json

``--precisions fp32,bf16`` times each precision (ours, and the peer under the same autocast) in
the same alternating rounds, with the peak matmul measured at each precision, and reports
``bf16_over_fp32`` (median of per-round ratios) and MFU against that precision's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from harness import (
    BenchError,
    Setup,
    add_options,
    build_step,
    configure,
    peer_unsupported,
    require_peer,
    synchronise,
)
from torch.utils.flop_counter import FlopCounterMode

from jepa_lab.data.datasets import load_dataset
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.training.precision import resolve_precision
from jepa_lab.training.provenance import device_name, git_state

DEFAULT_SPECS = ["studies/fmnist_ema.yaml", "studies/fmnist_sigreg.yaml"]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: the practical peak of this device in ``dtype``."""
    size = 4096 if device.type == "cuda" else 1536
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronise(device)
    repeats = 50 if device.type == "cuda" else 8
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def measure(
    spec: ExperimentSpec, args: argparse.Namespace, setup: Setup, peaks: dict[str, float]
) -> dict:
    """One row: our step's rates and FLOPs at each precision of ``peaks`` (the first one at the
    top level), and the peer's beside them when there is one. Every (implementation, precision)
    runs in the same alternating rounds over the same batches."""
    device = setup.device
    data = load_dataset(spec.data, setup.data_dir).to(device)
    skipped = peer_unsupported(spec) if args.peer != "none" else None
    impls = ["ours"] + ([args.peer] if args.peer != "none" and skipped is None else [])
    keys = [(impl, precision) for impl in impls for precision in peaks]
    steps = {
        (impl, precision): build_step(impl, spec, data, replace(setup, dtype=precision))
        for impl, precision in keys
    }
    warmup_seconds = {}  # with --compile, the first compilation is in here
    for key, step in steps.items():
        start = time.perf_counter()
        for index in range(args.warmup):
            step(index)
        synchronise(device)
        warmup_seconds[key] = time.perf_counter() - start
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    index = args.warmup
    for _ in range(args.windows):  # alternating rounds over the same batches
        for key, step in steps.items():
            start = time.perf_counter()
            for offset in range(args.window_steps):
                step(index + offset)
            synchronise(device)
            elapsed = time.perf_counter() - start
            rates[key].append(args.window_steps * spec.optim.batch_size / elapsed)
        index += args.window_steps
    results = {}
    for (impl, precision), step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step(index)
        flops_per_image = counter.get_total_flops() / spec.optim.batch_size
        rate = statistics.median(rates[impl, precision])
        results[impl, precision] = {
            "images_per_second": rate,
            "images_per_second_windows": rates[impl, precision],
            "flops_per_image": flops_per_image,
            "achieved_flops": rate * flops_per_image,
            "mfu": rate * flops_per_image / peaks[precision],
            "warmup_seconds": warmup_seconds[impl, precision],
        }
    first = next(iter(peaks))
    row: dict = {
        "spec": spec.name,
        "strategy": spec.strategy.kind,
        "batch_size": spec.optim.batch_size,
        "precision": first,
        **results["ours", first],
        "peer": None,
        "ours_over_peer": None,
    }
    if args.peer != "none":
        row["peer"] = {"name": args.peer, "skipped": skipped, **results.get((args.peer, first), {})}
    if (args.peer, first) in results:
        row["ours_over_peer"], row["ours_over_peer_windows"] = _ratio(
            rates["ours", first], rates[args.peer, first]
        )
    if len(peaks) > 1:
        row["by_precision"] = {
            precision: {
                impl: results[impl, precision] | {"peak_flops": peaks[precision]} for impl in impls
            }
            for precision in peaks
        }
        if {"fp32", "bf16"} <= set(peaks):
            row["bf16_over_fp32"], row["bf16_over_fp32_windows"] = _ratio(
                rates["ours", "bf16"], rates["ours", "fp32"]
            )
            if args.peer in impls:  # both under bf16 autocast, and each at its own default
                row["ours_over_peer_bf16"], _ = _ratio(
                    rates["ours", "bf16"], rates[args.peer, "bf16"]
                )
                ours = resolve_precision(None, device)  # auto; the peer trains in fp32 unless told
                row["default_precisions"] = {"ours": ours, args.peer: "fp32"}
                row["ours_over_peer_at_defaults"], _ = _ratio(
                    rates["ours", ours], rates[args.peer, "fp32"]
                )
    return row


def _ratio(numerator: list[float], denominator: list[float]) -> tuple[float, list[float]]:
    """The median of the per-round ratios, and the ratios: paired by round, so a change in
    machine load between rounds cancels."""
    rounds = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return statistics.median(rounds), rounds


def print_precisions(rows: list[dict]) -> None:
    """img/s and MFU (against the peak at that precision) per precision, and bf16/fp32."""
    for row in rows:
        for precision, impls in row.get("by_precision", {}).items():
            for impl, result in impls.items():
                print(
                    f"{row['spec']:<18}{impl:<9}{precision:<6}"
                    f"{result['images_per_second']:>10.1f} img/s  MFU "
                    f"{100 * result['mfu']:>5.1f}% of {result['peak_flops'] / 1e9:.1f} GFLOP/s"
                    f"  warm-up {result['warmup_seconds']:.1f} s"
                )
        if "bf16_over_fp32" in row:
            print(f"{row['spec']:<18}bf16/fp32 {row['bf16_over_fp32']:.2f}x (median of rounds)")
        if "ours_over_peer_bf16" in row:
            print(f"{row['spec']:<18}ours/peer under bf16 {row['ours_over_peer_bf16']:.2f}x")
            defaults = ", ".join(f"{k} {v}" for k, v in row["default_precisions"].items())
            ratio = row["ours_over_peer_at_defaults"]
            print(f"{row['spec']:<18}ours/peer, each at its default ({defaults}) {ratio:.2f}x")


def print_table(rows: list[dict], peer: str) -> None:
    header = f"{'spec':<18}{'batch':>6}{'img/s':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}{'MFU':>8}"
    if peer != "none":
        header += f"{peer + ' img/s':>15}{'GFLOP/img':>11}{'MFU':>8}{'ours/' + peer:>14}"
    print(header)
    for row in rows:
        line = (
            f"{row['spec']:<18}{row['batch_size']:>6}{row['images_per_second']:>10.1f}"
            f"{row['flops_per_image'] / 1e9:>11.3f}{row['achieved_flops'] / 1e9:>10.1f}"
            f"{100 * row['mfu']:>7.1f}%"
        )
        other = row["peer"]
        if other and other["skipped"] is None:
            line += (
                f"{other['images_per_second']:>15.1f}{other['flops_per_image'] / 1e9:>11.3f}"
                f"{100 * other['mfu']:>7.1f}%{row['ours_over_peer']:>13.2f}x"
            )
        print(line)
    for row in rows:
        if row["peer"] and row["peer"]["skipped"]:
            print(f"note: {row['spec']} has no {peer} peer: {row['peer']['skipped']}")


def _precisions(args: argparse.Namespace) -> list[str] | None:
    """``--precisions`` as a list (None when not given); a bad one is a BenchError."""
    if args.precisions is None:
        return None
    if args.dtype is not None:
        raise BenchError("give --dtype or --precisions, not both")
    precisions = list(dict.fromkeys(p.strip() for p in args.precisions.split(",") if p.strip()))
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        raise BenchError(f"--precisions: fp32 and/or bf16, comma-separated: {args.precisions!r}")
    return precisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT_SPECS)
    add_options(parser)
    parser.add_argument("--peer", choices=["none", "lightly"], default="none",
                        help="also time this library's I-JEPA step, alternating")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-steps", type=int, default=4)
    parser.add_argument("--precisions", default=None,
                        help="e.g. fp32,bf16: each in alternating rounds, with its own peak; "
                        "reports the bf16/fp32 ratio (not with --dtype)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        peer_version = require_peer(args.peer) if args.peer != "none" else None
        precisions = _precisions(args)
        setup, specs = configure(args, args.specs)
        if setup.device.type == "cuda" and precisions and "fp32" in precisions:
            raise BenchError("--precisions fp32 on cuda: train_step always autocasts to bf16 there")
    except BenchError as exc:
        print("\n".join(f"error: {m}" for m in exc.messages), file=sys.stderr)
        return 2
    device = setup.device
    peaks = {
        precision: peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)
        for precision in precisions or [setup.dtype]
    }
    peak = next(iter(peaks.values()))
    rows = [measure(spec, args, setup, peaks) for spec in specs]
    commit, dirty, _ = git_state()
    report = {
        "machine": {
            "device": str(device),
            "device_name": device_name(device),
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "cpu_count": len(os.sched_getaffinity(0)),
        },
        "torch": torch.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "dtype": setup.dtype,
        "precisions": list(peaks),
        "compile": setup.compile,
        "peak_flops": peak,
        "peak_flops_by_precision": peaks,
        "peer": {"name": args.peer, "version": peer_version} if peer_version else None,
        "results": rows,
    }
    shown = ", ".join(f"{p} peak {f / 1e9:.1f} GFLOP/s" for p, f in peaks.items())
    print(f"{device_name(device)} ({device}, {torch.get_num_threads()} threads, {shown})")
    print_table(rows, args.peer)
    print_precisions(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
