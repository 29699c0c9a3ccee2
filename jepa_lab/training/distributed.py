"""Process-group plumbing for data-parallel training (torchrun / ``--nproc``), and each rank's
device.

A single process (no ``WORLD_SIZE`` in the environment, or 1) creates no process group and pays
nothing. Under torchrun every rank joins with a timeout (``JEPA_LAB_DIST_TIMEOUT`` seconds), so a
dead peer ends the run with an error instead of a hang. Waiting for rank 0's mid-run probe, which
can take longer than any fixed timeout, goes through a second (gloo) group with a timeout of a day:
torchrun's agent still ends every rank within seconds when one dies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from jepa_lab.core.strategies import Strategy
from jepa_lab.core.strategies.sigreg import AllReduce

TIMEOUT = timedelta(seconds=int(os.environ.get("JEPA_LAB_DIST_TIMEOUT", "120")))
PATIENT_TIMEOUT = timedelta(days=1)  # waiting for rank 0's probe, whatever its size


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the output gradients over ranks: each rank's input
    feeds every rank's output. (What the deprecated torch.distributed.nn.functional.all_reduce
    did, on every torch this package supports.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one experiment."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    patient: Any = field(default=None, compare=False, repr=False)  # the long-timeout group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch`` rows."""
        per_rank = batch // self.size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def all_reduce_mean(self) -> AllReduce | None:
        """Autograd-aware mean over ranks (None for a single process)."""
        if self.size == 1:
            return None
        size = self.size

        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            return _AllReduceSum.apply(tensor) / size

        return reduce

    def wait_for_main(self) -> None:
        """Every rank waits here until rank 0 arrives (after its probe), with no short timeout;
        a no-op for one process."""
        if self.size > 1:
            dist.barrier(group=self.patient)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over ranks in place (no autograd); a no-op for one process."""
        if self.size > 1:
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def disagree(self, value: float) -> bool:
        """True when ``value`` (e.g. a parameter checksum) is not identical on every rank."""
        if self.size == 1:
            return False
        values: list[float | None] = [None] * self.size
        dist.all_gather_object(values, value)
        return len(set(values)) > 1


def checksum(module: torch.nn.Module | Strategy) -> float:
    """Sum of every parameter in float64: equal weights give bit-equal checksums."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in module.parameters()))


def pick_device(name: str | None) -> torch.device:
    """The device ``name`` names (a bare ``cuda`` under torchrun: this rank's GPU); by default
    this rank's CUDA GPU, else MPS, else the CPU."""
    if name is not None:
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        return device
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def join_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment, or stay a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    patient = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)  # a CPU barrier only
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, patient)


def leave_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
