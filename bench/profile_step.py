"""Profile a few training steps of one spec with torch.profiler: the top ops by self time.

Builds the step exactly as throughput.py does (bench/harness.py), runs ``--warmup`` steps outside
the profiler (compilation, allocator warm-up), then profiles ``--steps`` steps. Prints the top ops
by self CPU time (self device time on CUDA); ``--trace`` writes a Chrome trace (chrome://tracing or
ui.perfetto.dev), ``--json`` a summary. ``--impl lightly`` profiles the throughput peer instead.
Without a GPU, kineto logs a harmless ``gpuGetDeviceCount failed``; KINETO_LOG_LEVEL=5 hides it.

    python bench/profile_step.py studies/fmnist_ema.yaml --steps 3 --json profile.json
    python bench/profile_step.py studies/fmnist_ema.yaml --dtype bf16 --shapes --top 30
    python bench/profile_step.py studies/cifar10_ijepa.yaml --device cuda --compile --trace t.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from harness import (
    IMPLS,
    BenchError,
    add_options,
    build_step,
    configure,
    peer_unsupported,
    require_peer,
    synchronise,
)
from torch.profiler import ProfilerActivity, profile, record_function

from jepa_lab.data.datasets import load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    add_options(parser)
    parser.add_argument("--impl", choices=IMPLS, default="ours", help="whose step to profile")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="ops to print and keep")
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome trace here")
    parser.add_argument("--json", type=Path, default=None, help="write a summary here")
    shapes = "one row per op and input shapes (e.g. which casts cost most)"
    parser.add_argument("--shapes", action="store_true", help=shapes)
    args = parser.parse_args(argv)
    try:
        if args.impl != "ours":
            require_peer(args.impl)
        setup, [spec] = configure(args, [args.spec])
        if args.impl != "ours" and (reason := peer_unsupported(spec)):
            raise BenchError(f"{spec.name}: {reason}")
    except BenchError as exc:
        print("\n".join(f"error: {m}" for m in exc.messages), file=sys.stderr)
        return 2
    device = setup.device
    data = load_dataset(spec.data, setup.data_dir).to(device)
    step = build_step(args.impl, spec, data, setup)
    for index in range(args.warmup):
        step(index)
    synchronise(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=args.shapes) as prof:
        start = time.perf_counter()
        for index in range(args.warmup, args.warmup + args.steps):
            with record_function("train_step"):
                step(index)
        synchronise(device)
        seconds = (time.perf_counter() - start) / args.steps
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    what = f"{args.impl}, {device}, {setup.dtype}, compile={setup.compile}"
    batch = spec.optim.batch_size
    print(f"{spec.name} ({what}, batch {batch}): {seconds * 1e3:.1f} ms/step under the profiler")
    print(averages.table(sort_by=sort, row_limit=args.top))
    if args.trace:
        args.trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(args.trace))
    if args.json:
        top = sorted(averages, key=lambda e: getattr(e, sort), reverse=True)[: args.top]
        summary = {
            "spec": spec.name,
            "impl": args.impl,
            "device": str(device),
            "dtype": setup.dtype,
            "compile": setup.compile,
            "batch_size": spec.optim.batch_size,
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "seconds_per_step_profiled": seconds,
            "sorted_by": sort,
            "ops": [
                {
                    "name": e.key,
                    "input_shapes": str(e.input_shapes) if args.shapes else None,
                    "count": e.count,
                    "self_cpu_us": e.self_cpu_time_total,
                    "cpu_total_us": e.cpu_time_total,
                    "self_device_us": e.self_device_time_total,
                    "device_total_us": e.device_time_total,
                }
                for e in top
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
