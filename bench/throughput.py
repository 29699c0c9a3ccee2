"""Training-step throughput of shipped specs: images/s, model FLOPs per image, achieved FLOP/s, MFU.

Measures the whole step the trainer runs (batch + augmentation + masks, target forward, context
forward/backward, predictor, optimiser, EMA or SIGReg) with the trainer's own functions. Images/s
is the median over timed windows after warm-up, synchronised with the device only at window ends.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one step; the peak is measured
in the same run (a large fp32 matmul on CPU, a bf16 matmul on CUDA), so MFU = achieved / peak on
this very machine.

    python bench/throughput.py --json bench/results/cpu.json
    python bench/throughput.py studies/cifar10_ijepa.yaml --device cuda --compile --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from jepa_lab.data import load_dataset
from jepa_lab.models import build_model
from jepa_lab.provenance import device_name, git_state
from jepa_lab.spec import ExperimentSpec
from jepa_lab.specfile import SpecError, load
from jepa_lab.strategies import build_strategy
from jepa_lab.train import build_optimizer, global_batch, pick_device, train_step

DEFAULT_SPECS = ["studies/fmnist_ema.yaml", "studies/fmnist_sigreg.yaml"]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def measure(spec: ExperimentSpec, args: argparse.Namespace, device: torch.device) -> dict:
    data = load_dataset(spec.data, args.data_dir).to(device)
    total = spec.optim.total_steps(len(data.train_labels))
    model = build_model(spec.model, spec.data.image_size, spec.data.channels, spec.seed).to(device)
    strategy = build_strategy(spec.strategy, model.encoder, total).to(device)
    optimizer = build_optimizer(model, spec.optim, fused=device.type == "cuda")
    trained = torch.compile(model) if args.compile else model
    autocast = args.dtype == "bf16"

    def step(index: int) -> None:
        images, masks = global_batch(spec, data, index, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            train_step(trained, strategy, optimizer, images, masks, spec.loss, index, None)

    for index in range(args.warmup):
        step(index)
    synchronise(device)
    rates = []
    index = args.warmup
    for _ in range(args.windows):
        start = time.perf_counter()
        for _ in range(args.window_steps):
            step(index)
            index += 1
        synchronise(device)
        rates.append(args.window_steps * spec.optim.batch_size / (time.perf_counter() - start))
    with FlopCounterMode(display=False) as counter:
        step(index)
    flops_per_image = counter.get_total_flops() / spec.optim.batch_size
    rate = statistics.median(rates)
    return {
        "spec": spec.name,
        "strategy": spec.strategy.kind,
        "batch_size": spec.optim.batch_size,
        "images_per_second": rate,
        "images_per_second_windows": rates,
        "flops_per_image": flops_per_image,
        "achieved_flops": rate * flops_per_image,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT_SPECS)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 on CUDA, fp32 elsewhere")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--batch-size", type=int, default=None, help="override the spec's batch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-steps", type=int, default=4)
    parser.add_argument("--data-dir", default=os.environ.get("JEPA_LAB_DATA"))
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    peak_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    overrides = [f"optim.batch_size={args.batch_size}"] if args.batch_size else []
    try:
        specs = [load(ExperimentSpec, path, overrides) for path in args.specs]
    except SpecError as exc:
        print("\n".join(f"error: {m}" for m in exc.messages), file=sys.stderr)
        return 2
    peak = peak_flops(device, peak_dtype)
    rows = []
    for spec in specs:
        row = measure(spec, args, device)
        row["mfu"] = row["achieved_flops"] / peak
        rows.append(row)
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
        "dtype": args.dtype,
        "compile": args.compile,
        "peak_flops": peak,
        "results": rows,
    }
    header = f"{'spec':<18}{'batch':>6}{'img/s':>10}{'GFLOP/img':>11}{'GFLOP/s':>10}{'MFU':>8}"
    print(f"{device_name(device)} ({device}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"peak {peak / 1e9:.1f} GFLOP/s)")  # fmt: skip
    print(header)
    for row in rows:
        print(
            f"{row['spec']:<18}{row['batch_size']:>6}{row['images_per_second']:>10.1f}"
            f"{row['flops_per_image'] / 1e9:>11.3f}{row['achieved_flops'] / 1e9:>10.1f}"
            f"{100 * row['mfu']:>7.1f}%"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
