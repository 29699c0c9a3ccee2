"""Checkpoints: a damaged, foreign or booby-trapped file is refused with one line, exit 2."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jepa_lab.cli.main import app
from jepa_lab.spec.experiment import ExperimentSpec
from jepa_lab.spec.load import load
from jepa_lab.training.checkpoint import CheckpointError, read_checkpoint
from jepa_lab.training.loop import TrainOptions, train

SETS = ["optim.steps=2", "eval.baselines=false", "log_every=1"]


def interrupted_run(smoke_path: Path, run_dir: Path) -> Path:
    """A run stopped after one step: its checkpoint, ready for --resume."""
    spec = load(ExperimentSpec, smoke_path, SETS)
    train(spec, options=TrainOptions(run_dir=run_dir, device="cpu", stop_at=1))
    return run_dir / "checkpoint.pt"


def resume(smoke_path: Path, run_dir: Path) -> tuple[int, list[str]]:
    sets = [arg for s in SETS for arg in ("--set", s)]
    args = ["train", str(smoke_path), *sets, "--run-dir", str(run_dir), "--resume"]
    result = CliRunner().invoke(app, [*args, "--no-track", "--no-progress", "--device", "cpu"])
    return result.exit_code, result.output.strip().splitlines()


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x40]))


def test_a_flipped_tensor_byte_is_refused_and_the_checkpoint_left_alone(
    smoke_path: Path, tmp_path: Path
) -> None:
    checkpoint = interrupted_run(smoke_path, tmp_path)
    assert read_checkpoint(checkpoint)["step"] == 1
    flip_tensor_byte(checkpoint)
    # torch itself loads the damaged file without complaint: only the checksum catches it
    assert torch.load(checkpoint, weights_only=True)["step"] == 1
    damaged = checkpoint.read_bytes()
    code, lines = resume(smoke_path, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert str(checkpoint) in lines[0] and "damaged" in lines[0]
    assert checkpoint.read_bytes() == damaged
    assert not (tmp_path / "result.json").exists()


def test_a_foreign_checkpoint_is_one_line(smoke_path: Path, tmp_path: Path) -> None:
    torch.save({"x": 1}, tmp_path / "checkpoint.pt")
    code, lines = resume(smoke_path, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert "not a jepa-lab checkpoint" in lines[0] and str(tmp_path / "checkpoint.pt") in lines[0]


class Trap:
    """Unpickling this runs ``os.system``: a weights_only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_checkpoints_load_weights_only(smoke_path: Path, tmp_path: Path) -> None:
    checkpoint = interrupted_run(smoke_path, tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**state, "records": Trap(marker)}, checkpoint)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        read_checkpoint(checkpoint)
    code, lines = resume(smoke_path, tmp_path)
    assert code == 2 and len(lines) == 1 and "unreadable checkpoint" in lines[0], lines
    assert not marker.exists()


def test_a_checkpoint_without_its_checksum_is_refused(smoke_path: Path, tmp_path: Path) -> None:
    checkpoint = interrupted_run(smoke_path, tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    del state["sha256"]
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointError, match="no sha256"):
        read_checkpoint(checkpoint)
