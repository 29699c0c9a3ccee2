"""Probe accuracy against training steps, from result.json files written with ``eval.every``.

    python bench/probe_curves.py docs/results/search/e4_p7.json ... --out docs/img/probe_curves.png

Each file is one run (``jepa-lab train SPEC --set eval.every=N --json FILE``); its ``curve`` holds
the probe at step 0 (the untrained encoder), every N steps and at the end. The strongest random-init
baseline of each run is drawn as a dotted line in the run's colour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def label(result: dict) -> str:
    spec = result["spec"]
    model, strategy, optim = spec["model"], spec["strategy"], spec["optim"]
    extra = ""
    if strategy["kind"] == "sigreg":
        head = f", head {strategy['projector']}" if strategy.get("projector") else ""
        dirs = f", {strategy['directions']} dirs"
        extra = f" {strategy['lambda']}, {strategy['embeddings']}{head}{dirs}"
    return (
        f"{strategy['kind']}{extra}, patch {model['patch_size']}, "
        f"{result['steps']} x {optim['batch_size']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for path in args.results:
        result = json.loads(path.read_text())
        if not result.get("curve"):
            raise SystemExit(f"error: {path}: no curve (train with --set eval.every=N)")
        batch = result["spec"]["optim"]["batch_size"]
        steps = [c["step"] * batch / 1000 for c in result["curve"]]  # thousands of images
        acc = [100 * c["curve/probe_acc"] for c in result["curve"]]
        seconds = result["train_seconds"]
        (line,) = ax.plot(steps, acc, marker="o", label=f"{label(result)} ({seconds:.0f} s)")
        random = 100 * result["metrics"]["eval/random_probe_acc"]
        ax.axhline(random, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("training images seen (thousands; 60 = one epoch)")
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.set_title("Fashion-MNIST, 2-core CPU; dotted: strongest random-init encoder")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
