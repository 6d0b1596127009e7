"""The process group, owned by the entry point: join it under torchrun, leave it at the end.

``train()`` never creates or destroys the group; it takes a ``DistInfo`` saying which rank it is.
One process (no torchrun, or WORLD_SIZE=1) is ``DistInfo()``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_preference: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        use_cuda = device_preference != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


@contextlib.contextmanager
def process_group(device_preference: str):
    """``with process_group(pref) as info:``: joined on entry (under torchrun), destroyed on exit."""
    info = init_distributed(device_preference)
    try:
        yield info
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce(values: list[float], device, op=None) -> list[float]:
    """Sum (or ``op``) of ``values`` over every rank, in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
