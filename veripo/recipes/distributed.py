"""Data-parallel plumbing for the recipes: which rank am I, gather Python objects, sum gradients.

Launch with ``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node N -m veripo run CONFIG``)
or ``accelerate launch`` on GPUs; on CPU, ``accelerate launch`` with ``distributed_type: MULTI_CPU`` on one
machine starts a single process unless given an mpirun hostfile, so use torchrun there. A single process
needs nothing.

The recipes split *questions* over ranks (question ``i`` of a batch goes to rank ``i % world``), compute
their loss with the global normalisers, and sum gradients over ranks, so any number of ranks takes the same
optimizer step as one process on the same global batch (tests/recipes/test_data_parallel_on_cpu.py: two CPU processes over
gloo match one process to 1e-5). Sampling seeds depend on the question, never on the rank.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

T = TypeVar("T")

# Gradients are summed in flat buckets of at most this many elements: one collective per bucket instead
# of one per parameter (hundreds for Qwen2.5-VL), with a bounded extra buffer.
BUCKET_ELEMENTS = 1 << 24


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
        if backend == "nccl":  # before the group exists, so NCCL binds each rank to its own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=collective_timeout())
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective: rank 0 alone verifies (an LLM judge over
    thousands of rollouts) while the others wait at the stage barrier, which torch's 30-minute default can
    cut short. ``VERIPO_DIST_TIMEOUT_S`` overrides the 6 hours."""
    raw = os.environ.get("VERIPO_DIST_TIMEOUT_S", str(6 * 3600))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"VERIPO_DIST_TIMEOUT_S={raw!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"VERIPO_DIST_TIMEOUT_S={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def gather_objects(info: DistInfo, local: list[Any]) -> list[Any]:
    """Concatenate every rank's list, restoring the global order of a ``shard``: item ``i`` of rank ``r``
    goes to position ``i * world + r``, so the result is the list one process would have built."""
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


def broadcast_object(info: DistInfo, value: T | None) -> T:
    """Rank 0's ``value`` on every rank (e.g. the run directory rank 0 created)."""
    if info.world == 1:
        return value  # type: ignore[return-value]
    holder = [value if info.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[return-value]


def sum_gradients(info: DistInfo, model: torch.nn.Module) -> None:
    """Sum ``.grad`` over ranks (each rank's loss already carries the global normalisers).

    A parameter that received a gradient on *some* rank gets a zero gradient on the others before the sum
    (a rank whose questions had no video never reaches the vision tower). A parameter that received none on
    *any* rank keeps ``grad = None`` everywhere, as in one process: AdamW then skips it (no weight decay, no
    step-count increment), which a zero gradient would not.
    """
    if info.world == 1:
        return
    # sharded parameters (DTensors, veripo.recipes.sharding) were already summed by FSDP's reduce-scatter, and
    # DeepSpeed ZeRO-3's (ds_id) by its engine
    params = [p for p in model.parameters()
              if p.requires_grad and not isinstance(p, DTensor) and not hasattr(p, "ds_id")]
    if not params:
        return
    device = params[0].device
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(used, op=dist.ReduceOp.SUM)
    reached = [p for p, n in zip(params, used.tolist()) if n > 0]
    for p in reached:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(reached):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Consecutive parameters of one dtype and device, at most ``BUCKET_ELEMENTS`` each (a larger
    parameter gets a bucket of its own)."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if buckets and size + p.numel() <= BUCKET_ELEMENTS and buckets[-1][0].grad.dtype == p.grad.dtype \
                and buckets[-1][0].grad.device == p.grad.device:
            buckets[-1].append(p)
            size += p.numel()
        else:
            buckets.append([p])
            size = p.numel()
    return buckets


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def finish_process(exit_code: int) -> None:
    """End a process of a multi-process command: wait for the other ranks (after success), leave the group and
    exit at once. Interpreter teardown with gloo's threads still alive aborted a finished rank now and then
    (SIGABRT, "terminate called without an active exception"), failing a run that had succeeded. No-op in
    a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if exit_code == 0:
        dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
