"""Data parallelism on the CPU (gloo) with real torchrun processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa_lab.core.strategies.sigreg import sigreg, sigreg_directions
from jepa_lab.training.checkpoint import read_checkpoint
from jepa_lab.training.distributed import World

from ..conftest import REPO

pytestmark = pytest.mark.slow
FAST = ["optim.steps=12", "log_every=4", "eval.baselines=false", "eval.probe_train=64"]


def torchrun(
    nproc: int, args: dict, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--monitor-interval=0.5",
        str(REPO / "tests" / "training" / "dist_script.py"), json.dumps(args),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=REPO
    )


def history(done: subprocess.CompletedProcess) -> list[dict]:
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("HISTORY "))
    return json.loads(line.removeprefix("HISTORY "))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint(run_dir / "checkpoint.pt")
    return {f"model.{k}": v for k, v in state["model"].items()} | {
        f"strategy.{k}": v for k, v in state["strategy"].items()
    }


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


STRATEGIES = {
    "ema": ["strategy.kind=ema"],
    "sigreg": ["strategy.kind=sigreg", "strategy.projector=null"],
    "sigreg_projector": ["strategy.kind=sigreg", "strategy.projector=16"],  # a head outside forward
}


@pytest.mark.parametrize("kind", STRATEGIES)
def test_two_ranks_with_half_batches_equal_one_rank(tmp_path: Path, kind: str) -> None:
    overrides = [*FAST, *STRATEGIES[kind]]
    one = history(torchrun(1, {"overrides": overrides, "run_dir": str(tmp_path / "one")}))
    two = history(torchrun(2, {"overrides": overrides, "run_dir": str(tmp_path / "two")}))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [4, 8, 12]
    for a, b in zip(one, two, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"))


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path: Path) -> None:
    overrides = [*FAST, "strategy.kind=ema"]
    whole = tmp_path / "whole"
    history(torchrun(1, {"overrides": overrides, "run_dir": str(whole)}))
    parts = tmp_path / "parts"
    history(torchrun(2, {"overrides": overrides, "run_dir": str(parts), "stop_at": 8}))
    assert read_checkpoint(parts / "checkpoint.pt")["step"] == 8
    history(torchrun(1, {"overrides": overrides, "run_dir": str(parts), "resume": True}))
    assert_close(weights(whole), weights(parts))


def test_a_two_rank_run_resumed_between_log_steps_logs_the_same_rows(tmp_path: Path) -> None:
    """The checkpoint at step 6 (log_every 4) carries the open window averaged over the ranks."""
    overrides = [*FAST, "strategy.kind=ema"]
    whole = history(torchrun(2, {"overrides": overrides, "run_dir": str(tmp_path / "whole")}))
    parts = str(tmp_path / "parts")
    history(torchrun(2, {"overrides": overrides, "run_dir": parts, "stop_at": 6}))
    resumed = history(torchrun(2, {"overrides": overrides, "run_dir": parts, "resume": True}))
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [4, 8, 12]
    for a, b in zip(whole, resumed, strict=True):
        for key in ("train/loss", "train/loss_pred", "train/lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


def test_a_probe_slower_than_the_process_group_timeout_completes(tmp_path: Path) -> None:
    """Rank 0 probes mid-run (eval.every) for longer than the collectives' timeout (3 s here,
    120 s by default); rank 1 waits for it at a barrier without that timeout."""
    overrides = [*FAST, "eval.every=4"]
    args = {"overrides": overrides, "run_dir": str(tmp_path), "probe_sleep": 6}
    done = torchrun(2, args, env={"JEPA_LAB_DIST_TIMEOUT": "3"})
    assert [row["step"] for row in history(done)] == [4, 8, 12]
    result = read_checkpoint(tmp_path / "checkpoint.pt")
    assert [point["step"] for point in result["records"]["curve"]] == [0, 4, 8]


def test_a_failing_rank_stops_the_run_with_its_error(tmp_path: Path) -> None:
    args = {"overrides": [*FAST, "optim.steps=400"], "run_dir": str(tmp_path),
            "fail_rank": 1, "fail_step": 3}  # fmt: skip
    started = time.monotonic()
    done = torchrun(2, args, timeout=120)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stderr
    assert time.monotonic() - started < 60  # seconds, not the process-group timeout


def _sigreg_rank(rank: int, port: int, z: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = z.chunk(2)[rank].clone().requires_grad_(True)
        directions = sigreg_directions(z.shape[1], 64, step=3)
        mean = World(rank, 2).all_reduce_mean()
        value = sigreg(half, directions, all_reduce_mean=mean, world_size=2)
        value.backward()
        out[rank] = (value.detach(), half.grad)
    finally:
        dist.destroy_process_group()


def test_sigreg_on_a_global_batch_equals_the_single_process_value(unused_tcp_port: int) -> None:
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.2
    full = z.clone().requires_grad_(True)
    value = sigreg(full, sigreg_directions(16, 64, step=3))
    value.backward()
    assert full.grad is not None
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_sigreg_rank, args=(unused_tcp_port, z, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        rank_value, rank_grad = results[rank]
        torch.testing.assert_close(rank_value, value.detach())
        # Each rank's backward sees the all-reduced output grad; DDP's mean over the 2 ranks
        # then gives each parameter exactly the single-process gradient.
        torch.testing.assert_close(rank_grad / 2, full.grad.chunk(2)[rank])


def cli_two_ranks(run_dir: Path, *options: str) -> dict:
    """``jepa-lab train smoke.yaml --nproc 2 OPTIONS``: checks that only rank 0 printed and wrote
    and that the ranks agreed at every log step; returns result.json (also for tests/test_cuda.py).
    """
    command = [
        sys.executable, "-m", "jepa_lab", "train", str(REPO / "studies" / "smoke.yaml"),
        "--nproc", "2", "--no-track", "--no-progress", "--run-dir", str(run_dir), *options,
        *[f"--set={item}" for item in FAST],
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("result: ") == 1  # one summary, from rank 0
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "result.json"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["completed"] and "eval/probe_acc" in result["metrics"]
    # Every log step compared a float64 checksum of all weights across the ranks (else exit 1).
    assert [row["step"] for row in result["history"]] == [4, 8, 12]
    return result


def test_cli_nproc_two_runs_and_only_rank_zero_writes(tmp_path: Path) -> None:
    # --device cpu: on a GPU machine the default would be CUDA (NCCL), which test_cuda.py covers.
    result = cli_two_ranks(tmp_path / "run", "--device", "cpu")
    assert result["provenance"]["device"] == "cpu"
