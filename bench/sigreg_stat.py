"""The SIGReg statistic alone, forward + backward: today's angle-addition form against the direct
sin/cos of the whole (N, M, T) tensor it replaced, in alternating rounds on the same inputs.

    python bench/sigreg_stat.py --n 2048 --directions 256 --knots 17 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from jepa_lab.core.strategies.sigreg import sigreg, sigreg_directions


def direct(z: torch.Tensor, directions: torch.Tensor, knots: int, t_max: float) -> torch.Tensor:
    """The statistic as computed before issue 15: cos and sin of (N, M, T)."""
    x = z @ directions
    t = torch.linspace(0.0, t_max, knots)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt)
    weights[0] = weights[-1] = dt
    weights = weights * torch.exp(-0.5 * t.square())
    xt = x.unsqueeze(-1) * t
    err = (xt.cos().mean(0) - torch.exp(-0.5 * t.square())).square() + xt.sin().mean(0).square()
    return ((err @ weights) * z.shape[0]).mean()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="embeddings (tokens x images)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--directions", type=int, default=256)
    parser.add_argument("--knots", type=int, default=17)
    parser.add_argument("--t-max", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    z = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0))
    directions = sigreg_directions(args.dim, args.directions, step=0)
    forms = {
        "direct": lambda z: direct(z, directions, args.knots, args.t_max),
        "angle_addition": lambda z: sigreg(z, directions, args.knots, args.t_max),
    }
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    values = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, form in forms.items():
            leaf = z.clone().requires_grad_()
            start = time.perf_counter()
            value = form(leaf)
            value.backward()
            if round_:
                seconds[name].append(time.perf_counter() - start)
            values[name] = float(value.detach())
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    speedup = statistics.median(
        [a / b for a, b in zip(seconds["direct"], seconds["angle_addition"], strict=True)]
    )
    relative = abs(values["angle_addition"] - values["direct"]) / abs(values["direct"])
    print(f"N={args.n} M={args.directions} T={args.knots} threads={torch.get_num_threads()}")
    for name, median in medians.items():
        print(f"{name:<15}{1000 * median:>9.1f} ms  (forward + backward, median)")
    print(f"speed-up {speedup:.1f}x (median of rounds); value relative difference {relative:.1e}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
            "median_seconds": medians, "speedup": speedup, "relative_difference": relative,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
