"""A world-model training step alone (forward, backward, optimiser, EMA update), timed on generated
Two-Rooms batches of one or more world specs, and the training time a whole run would take.

Times ``--steps`` steps after ``--warmup`` outside the clock, on a fixed pool of generated walks
(the step's cost does not depend on which walks), and prints seconds per step, frames per second
and the projected training time of the spec (``optim.total_steps`` x seconds per step). With
``--profile`` it also prints the top ops by self CPU time.

    python bench/world_step.py studies/wm_tworooms_sigreg.yaml --json world_step.json
    python bench/world_step.py studies/wm_tworooms_sigreg.yaml --set model.channels=32
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
from torch.profiler import ProfilerActivity, profile

from jepa_lab.core.world import WorldModel
from jepa_lab.data import tworooms
from jepa_lab.data.datasets import batch_indices
from jepa_lab.spec.load import SpecError, load
from jepa_lab.spec.world import WorldSpec
from jepa_lab.training.optim import build_optimizer
from jepa_lab.training.provenance import device_name, git_state
from jepa_lab.training.world_loop import world_train_step

POOL = 512  # generated walks the batches are drawn from


def measure(spec: WorldSpec, args: argparse.Namespace) -> dict:
    """One row: median seconds per step over ``args.rounds`` rounds of ``args.steps`` steps."""
    data = tworooms.generate(spec.env, spec.data, POOL, spec.data.length, spec.seed, "train")
    model = WorldModel(spec, spec.seed)
    optimizer = build_optimizer(model, spec.optim, fused=False)
    total = spec.optim.total_steps(spec.data.trajectories)
    model.train()

    def step(index: int) -> None:  # the training loop's own step
        batch = batch_indices(POOL, spec.optim.batch_size, index, spec.seed)
        world_train_step(model, optimizer, data.frames[batch], data.actions[batch], spec, index)

    for index in range(args.warmup):
        step(index)
    rounds = []
    index = args.warmup
    for _ in range(args.rounds):
        start = time.perf_counter()
        for offset in range(args.steps):
            step(index + offset)
        rounds.append((time.perf_counter() - start) / args.steps)
        index += args.steps
    seconds = statistics.median(rounds)
    top = []
    if args.profile:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for offset in range(args.steps):
                step(index + offset)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        everything = sum(e.self_cpu_time_total for e in events) or 1.0
        top = [
            {"op": e.key, "share": e.self_cpu_time_total / everything, "calls": e.count}
            for e in events[:10]
        ]
    frames = spec.optim.batch_size * spec.data.length
    return {
        "spec": spec.name,
        "strategy": spec.strategy.kind,
        "batch": spec.optim.batch_size,
        "frames_per_step": frames,
        "channels": spec.model.channels,
        "image_size": spec.env.image_size,
        "seconds_per_step": seconds,
        "seconds_per_step_rounds": rounds,
        "frames_per_second": frames / seconds,
        "total_steps": total,
        "projected_train_seconds": total * seconds,
        "top_ops": top,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="world-model spec files (kind: world_model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--profile", action="store_true", help="also the top ops by self time")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    try:
        specs = [load(WorldSpec, path, args.set) for path in args.specs]
    except SpecError as exc:
        print("\n".join(exc.messages), file=sys.stderr)
        return 2
    rows = [measure(spec, args) for spec in specs]
    print(f"{'spec':<22}{'batch x T':>10}{'s/step':>9}{'frames/s':>10}{'steps':>7}{'train':>9}")
    for row in rows:
        shape = f"{row['batch']}x{row['frames_per_step'] // row['batch']}"
        print(
            f"{row['spec']:<22}{shape:>10}{row['seconds_per_step']:>9.3f}"
            f"{row['frames_per_second']:>10.0f}{row['total_steps']:>7}"
            f"{row['projected_train_seconds'] / 60:>7.1f} m"
        )
        for op in row["top_ops"]:
            print(f"    {op['op']:<40}{100 * op['share']:>6.1f} %  {op['calls']} calls")
    load_1m = os.getloadavg()[0]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"load average {load_1m:.1f}")  # fmt: skip
    if args.json:
        commit, dirty, _ = git_state()
        args.json.write_text(json.dumps({
            "machine": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
            "load_average": load_1m, "torch": torch.__version__, "git_commit": commit,
            "git_dirty": dirty, "overrides": args.set, "rows": rows,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
