"""The bench scripts on the smoke spec: tiny runs, in subprocesses as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from ..conftest import REPO

TINY = ["--device", "cpu", "--threads", "1", "--batch-size", "32"]


def bench(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "bench" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


@pytest.mark.skipif(find_spec("lightly") is None, reason="lightly not installed (.[bench])")
def test_throughput_peer_runs_alternating_windows_and_writes_the_ratio(
    smoke_path: Path, tmp_path: Path
) -> None:
    from jepa_lab.training.precision import cpu_has_native_bf16

    out = tmp_path / "peer.json"
    window = ["--warmup", "1", "--windows", "2", "--window-steps", "1"]
    done = bench("throughput.py", str(smoke_path), "--peer", "lightly", "--precisions",
                 "fp32,bf16", *TINY, *window, "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours/lightly" in done.stdout and "each at its default" in done.stdout
    report = json.loads(out.read_text())
    assert report["peer"]["name"] == "lightly" and report["peer"]["version"].startswith("1.6")
    [row] = report["results"]
    peer = row["peer"]
    assert peer["skipped"] is None and len(peer["images_per_second_windows"]) == 2
    # Same shapes, same masks: the FLOP counter sees the same model work in both steps.
    assert peer["flops_per_image"] == pytest.approx(row["flops_per_image"], rel=0.01)
    assert row["ours_over_peer"] > 0 and len(row["ours_over_peer_windows"]) == 2
    # ours at its default (auto, on this CPU) against lightly at its own (fp32)
    ours = "bf16" if cpu_has_native_bf16() else "fp32"
    assert row["default_precisions"] == {"ours": ours, "lightly": "fp32"}
    assert row["ours_over_peer_at_defaults"] > 0 and row["ours_over_peer_bf16"] > 0


def test_throughput_precisions_alternate_and_report_the_ratio_and_each_peak(
    smoke_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "precisions.json"
    window = ["--warmup", "1", "--windows", "2", "--window-steps", "1"]
    done = bench("throughput.py", str(smoke_path), "--precisions", "fp32,bf16", *TINY, *window,
                 "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bf16/fp32" in done.stdout
    report = json.loads(out.read_text())
    assert report["precisions"] == ["fp32", "bf16"]
    assert set(report["peak_flops_by_precision"]) == {"fp32", "bf16"}
    [row] = report["results"]
    assert row["precision"] == "fp32" and row["bf16_over_fp32"] > 0
    assert len(row["bf16_over_fp32_windows"]) == 2
    for precision in ("fp32", "bf16"):
        ours = row["by_precision"][precision]["ours"]
        assert ours["peak_flops"] == report["peak_flops_by_precision"][precision]
        assert ours["mfu"] == pytest.approx(ours["achieved_flops"] / ours["peak_flops"])


def test_throughput_precisions_refuse_a_dtype_too(smoke_path: Path) -> None:
    done = bench("throughput.py", str(smoke_path), "--precisions", "fp32,bf16", "--dtype", "bf16",
                 *TINY)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "error: give --dtype or --precisions, not both"


def test_throughput_peer_without_lightly_is_one_line_and_exit_2(
    smoke_path: Path, tmp_path: Path
) -> None:
    hidden = tmp_path / "hide" / "lightly"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('lightly hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden.parent)}
    done = bench("throughput.py", str(smoke_path), "--peer", "lightly", *TINY, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: the lightly peer needs lightly 1.6 (lightly hidden by the test): "
        "pip install 'jepa-lab[bench]'"
    ]
    assert done.stdout == ""  # nothing measured


def test_profile_step_prints_top_ops_and_writes_summary_and_trace(
    smoke_path: Path, tmp_path: Path
) -> None:
    summary, trace = tmp_path / "profile.json", tmp_path / "trace.json"
    done = bench("profile_step.py", str(smoke_path), *TINY, "--warmup", "1", "--steps", "1",
                 "--top", "5", "--json", str(summary), "--trace", str(trace))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Self CPU" in done.stdout
    result = json.loads(summary.read_text())
    assert result["impl"] == "ours" and result["sorted_by"] == "self_cpu_time_total"
    times = [op["self_cpu_us"] for op in result["ops"]]
    assert len(times) == 5 and times == sorted(times, reverse=True) and times[-1] > 0
    assert "traceEvents" in json.loads(trace.read_text())
    assert all(op["input_shapes"] is None for op in result["ops"])
    # --shapes: one row per op and input shapes, e.g. autocast's casts under bf16
    done = bench("profile_step.py", str(smoke_path), *TINY, "--warmup", "1", "--steps", "1",
                 "--dtype", "bf16", "--shapes", "--top", "40", "--json", str(summary))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    casts = [op for op in json.loads(summary.read_text())["ops"] if op["name"] == "aten::copy_"]
    assert len(casts) > 1 and all(op["input_shapes"].startswith("[[") for op in casts)


def test_fp32_on_cuda_is_refused_because_train_step_always_autocasts_there(
    smoke_path: Path,
) -> None:
    done = bench("throughput.py", str(smoke_path), "--device", "cuda", "--dtype", "fp32")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --dtype fp32 on cuda:")


def test_fuzz_runs_validate_on_mutants_and_writes_its_counts(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    done = bench("fuzz.py", "--mutants", "22", "--subprocess", "0", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mutants"] == 22 and sum(report["exit_codes"].values()) == 22
    assert len(report["by_kind"]) >= 9  # (nearly) every kind of mutation
    assert report["exit_codes"].get("2", 0) >= 11  # most mutants are invalid
    assert report["tracebacks"] == 0, report["offending"]
    assert "mutants in" in done.stdout


WORLD_TINY = [
    "data.trajectories=64",
    "optim.batch_size=8",
    "model.channels=4",
    "model.latent=8",
    "model.projector_hidden=16",
    "model.pred_hidden=16",
    "strategy.directions=8",
]


def test_the_world_step_bench_times_steps_and_projects_a_run(tmp_path: Path) -> None:
    out = tmp_path / "world.json"
    spec = str(REPO / "studies" / "wm_tworooms_sigreg.yaml")
    sets = [arg for item in WORLD_TINY for arg in ("--set", item)]
    done = bench("world_step.py", spec, *sets, "--steps", "2", "--rounds", "2", "--warmup", "1",
                 "--threads", "1", "--profile", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["batch"] == 8 and row["frames_per_step"] == 8 * 17
    assert len(row["seconds_per_step_rounds"]) == 2 and row["seconds_per_step"] > 0
    assert row["projected_train_seconds"] == pytest.approx(
        row["total_steps"] * row["seconds_per_step"]
    )
    assert row["top_ops"] and "wm_tworooms_sigreg" in done.stdout
    bad = bench("world_step.py", spec, "--set", "model.channels=0")
    assert bad.returncode == 2 and "model.channels" in bad.stderr and "Traceback" not in bad.stderr
