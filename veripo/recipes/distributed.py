"""Data-parallel plumbing for the recipes: which rank am I, gather Python objects, sum gradients.

Launch with ``accelerate launch`` or ``torchrun``; a single process needs nothing. The recipes split
*questions* over ranks (question ``i`` of a batch goes to rank ``i % world``), compute their loss with the
global normalisers, and sum gradients over ranks, so any number of ranks takes the same optimizer step as
one process on the same global batch (tested with two CPU processes over gloo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share: items ``rank, rank + world, ...``."""
        return items[self.rank :: self.world]


def init_distributed() -> DistInfo:
    """Join the process group when launched with several processes (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def gather_objects(info: DistInfo, local: list[Any]) -> list[Any]:
    """Concatenate every rank's list, restoring the global order of a ``shard``: the result is the list
    one process would have built."""
    if info.world == 1:
        return list(local)
    parts: list[list[Any] | None] = [None] * info.world
    dist.all_gather_object(parts, local)
    merged: list[Any] = []
    longest = max(len(p or []) for p in parts)
    for i in range(longest):
        for p in parts:
            if p is not None and i < len(p):
                merged.append(p[i])
    return merged


def sum_gradients(info: DistInfo, model: torch.nn.Module) -> None:
    """Sum ``.grad`` over ranks (each rank's loss already carries the global normalisers)."""
    if info.world == 1:
        return
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:  # a rank whose questions never reached this parameter (e.g. no video)
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()
