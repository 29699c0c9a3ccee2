"""Run under torchrun by test_distributed.py: train the smoke spec with test-only options.

argv[1] is a JSON object: overrides, run_dir, stop_at, resume, precision (default fp32),
fail_rank, fail_step, probe_sleep (seconds rank 0's mid-run probe is slowed by).
"""

from __future__ import annotations

import json
import os
import sys

from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import load
from jepa_lab.training.loop import TrainOptions, train
from tests.conftest import STUDIES

args = json.loads(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
if args.get("fail_rank") == rank:
    import jepa_lab.training.loop as trainer

    real = trainer.jepa_losses

    def failing(*a, **k):  # type: ignore[no-untyped-def]
        if a[-1] >= args["fail_step"]:
            raise RuntimeError(f"injected failure on rank {rank}")
        return real(*a, **k)

    trainer.jepa_losses = failing  # type: ignore[assignment]

if args.get("probe_sleep") and rank == 0:
    import time

    import jepa_lab.training.loop as trainer

    real_probe = trainer.probe_now

    def slow_probe(*a, **k):  # type: ignore[no-untyped-def]
        time.sleep(args["probe_sleep"])
        return real_probe(*a, **k)

    trainer.probe_now = slow_probe  # type: ignore[assignment]

spec = load(ExperimentSpec, STUDIES / "smoke.yaml", args["overrides"])
# fp32 unless told: these tests compare one rank with two to 1e-4, which bf16's rounding of
# half and whole batches would not meet (the default, auto, is bf16 on CPUs that have it)
options = TrainOptions(
    device="cpu", run_dir=args["run_dir"] and __import__("pathlib").Path(args["run_dir"]),
    stop_at=args.get("stop_at"), resume=args.get("resume", False),
    precision=args.get("precision", "fp32"),
)  # fmt: skip
result = train(spec, options=options)
if rank == 0:
    print("HISTORY " + json.dumps(result.history))
