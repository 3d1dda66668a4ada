"""Data parallel: every rank holds the whole policy and trains on its share of the questions; gradients are
summed over the ranks (each rank's loss carries the global normalisers), so any number of ranks takes the same
optimizer step as one process on the same global batch. With ``distributed.shard_optimizer`` the AdamW state is
split over the ranks (ZeRO stage 1, torch's ``ZeroRedundancyOptimizer``).

Launch with ``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node N -m veripo run CONFIG``)
or ``accelerate launch`` on GPUs; on CPU, ``accelerate launch`` with ``distributed_type: MULTI_CPU`` on one
machine starts a single process unless given an mpirun hostfile, so use torchrun there.

The recipes split *questions* over ranks (question ``i`` of a batch goes to rank ``i % world``), compute
their loss with the global normalisers, and sum gradients over ranks (tests/parallel/test_data_parallel_on_cpu.py:
two CPU processes over gloo match one process to 1e-5). Sampling seeds depend on the question, never on the rank.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from veripo.parallel.base import DistInfo, ParallelStrategy
from veripo.parallel.precision import Precision

# Gradients are summed in flat buckets of at most this many elements: one collective per bucket instead
# of one per parameter (hundreds for Qwen2.5-VL), with a bounded extra buffer.
BUCKET_ELEMENTS = 1 << 24


class DataParallel(ParallelStrategy):
    """Whole policy on every rank, gradients summed; ``shard_optimizer``: AdamW state split over the ranks."""

    def __init__(self, info: DistInfo, shard_optimizer: bool = False, precision: Precision | None = None) -> None:
        super().__init__(info, precision)
        self.shard_optimizer = shard_optimizer and info.world > 1

    def optimizer(self, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[torch.optim.Optimizer, str | None]:
        if not self.shard_optimizer:
            return super().optimizer(lr, weight_decay, max_grad_norm)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=lr,
                                            weight_decay=weight_decay, foreach=False)
        return optimizer, f"AdamW state sharded over {self.info.world} ranks (ZeRO-1)"

    def reduce_gradients(self) -> None:
        sum_gradients(self.info, self.whole_parameters())

    def full_state(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        if isinstance(optimizer, ZeroRedundancyOptimizer):  # every rank sends its share of the state to rank 0
            optimizer.consolidate_state_dict(to=0)
            return None, optimizer.state_dict() if self.info.is_main else {}
        return None, None


def sum_gradients(info: DistInfo, parameters: Iterable[nn.Parameter]) -> None:
    """Sum ``.grad`` over ranks (each rank's loss already carries the global normalisers).

    A parameter that received a gradient on *some* rank gets a zero gradient on the others before the sum
    (a rank whose questions had no video never reaches the vision tower). A parameter that received none on
    *any* rank keeps ``grad = None`` everywhere, as in one process: AdamW then skips it (no weight decay, no
    step-count increment), which a zero gradient would not.
    """
    if info.world == 1:
        return
    # only whole parameters: a strategy that partitions some reduces their gradients itself
    params = [p for p in parameters if p.requires_grad]
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


