"""The shipped accuracy_vs_latency study validates and runs end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ..conftest import STUDIES
from .test_study import TINY, cli, home, shared_home  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_accuracy_vs_latency_runs_end_to_end_on_synthetic_data(home: Path, tmp_path: Path):  # noqa: F811
    shipped = yaml.safe_load((STUDIES / "accuracy_vs_latency.yaml").read_text())
    assert cli("validate", str(STUDIES / "accuracy_vs_latency.yaml")).returncode == 0
    tiny = dict(shipped, name="avl_tiny", base=str(STUDIES / "smoke.yaml"))
    tiny["overrides"] = {**shipped["overrides"], **TINY, "eval.deploy.iters": 3,
                         "eval.deploy.rounds": 1, "eval.deploy.warmup": 1,
                         "eval.deploy.tokens": 16}  # fmt: skip
    tiny["search"] = dict(shipped["search"], n_trials=2)
    tiny["search"]["sampler"] = dict(shipped["search"]["sampler"], population_size=2)
    tiny["search"]["params"] = {
        "model.dim": {"type": "categorical", "choices": [16, 32]},
        "model.depth": {"type": "int", "low": 1, "high": 2},
        "model.patch_size": {"type": "categorical", "choices": [4]},
    }
    path = tmp_path / "avl_tiny.yaml"
    path.write_text(yaml.safe_dump(tiny, sort_keys=False))
    done = cli("run", str(path), "--no-progress", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "front.csv"
    exported = cli("export", str(path), "--output", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "deploy/int8_p99_ms" in out.read_text()
    every = tmp_path / "all.json"
    exported = cli("export", str(path), "--all", "--output", str(every))
    assert exported.returncode == 0, exported.stderr[-2000:]
    rows = json.loads(every.read_text())["rows"]
    # one row per distinct configuration (two trials may sample the same one), both objectives
    assert 1 <= len(rows) <= 2 and {row["trial"] for row in rows} <= {0, 1}
    for row in rows:
        assert row["state"] == "COMPLETE", row
        assert 0 < row["deploy/int8_p99_ms (min)"] < 10_000, row
        assert 0 <= row["eval/probe_val_acc (max)"] <= 1, row
