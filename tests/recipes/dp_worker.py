"""A process of the data-parallel test (tests/recipes/test_data_parallel_on_cpu.py).

    python dp_worker.py run CONFIG PAIRS RESULT       # one process, or under torch.distributed.run
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py sum-gradients

``run`` runs the config's stages with ``veripo.recipes.veripo.run`` and rank 0 writes the run directory to
RESULT; ``sum-gradients`` checks ``sum_gradients`` on a toy module and exits non-zero on a mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # every process computes with one thread, so one and two processes round alike


def run_stages(config: str, pairs: str, result: str) -> None:
    from veripo.config import RunConfig, load
    from veripo.recipes.distributed import init_distributed
    from veripo.recipes.veripo import run

    info = init_distributed()
    run_dir = run(load(RunConfig, config), inputs={"pairs": Path(pairs)}, show_progress=False)
    if info.is_main:
        Path(result).write_text(str(run_dir.root))


def check_sum_gradients() -> None:
    """Rank r's grads: ``both`` = r + 1 everywhere, ``rank0_only`` = 5 on rank 0 and None on rank 1,
    ``unused`` = None on every rank. Tiny buckets so the flat buffers split."""
    import veripo.recipes.distributed as distributed

    info = distributed.init_distributed()
    assert info.world == 2, f"run me with 2 processes, got {info.world}"
    distributed.BUCKET_ELEMENTS = 5
    model = torch.nn.ParameterDict({
        "both": torch.nn.Parameter(torch.zeros(2, 2)),
        "rank0_only": torch.nn.Parameter(torch.zeros(3)),
        "unused": torch.nn.Parameter(torch.zeros(4)),
        "frozen": torch.nn.Parameter(torch.zeros(2), requires_grad=False),
    })
    model["both"].grad = torch.full((2, 2), float(info.rank + 1))
    if info.rank == 0:
        model["rank0_only"].grad = torch.full((3,), 5.0)
    distributed.sum_gradients(info, model)
    torch.testing.assert_close(model["both"].grad, torch.full((2, 2), 3.0))
    torch.testing.assert_close(model["rank0_only"].grad, torch.full((3,), 5.0))
    assert model["unused"].grad is None, f"rank {info.rank}: a parameter no rank reached got a gradient"
    assert model["frozen"].grad is None
    assert distributed.gather_objects(info, [f"r{info.rank}a", f"r{info.rank}b"]) == ["r0a", "r1a", "r0b", "r1b"]
    assert distributed.broadcast_object(info, f"dir-of-{info.rank}") == "dir-of-0"
    distributed.barrier(info)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 5:
        run_stages(*sys.argv[2:])
    elif sys.argv[1:] == ["sum-gradients"]:
        check_sum_gradients()
    else:
        sys.exit(__doc__)
