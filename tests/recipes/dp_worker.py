"""A process of the data-parallel test (tests/recipes/test_data_parallel_on_cpu.py).

    python dp_worker.py run CONFIG PAIRS RESULT       # one process, or under torch.distributed.run
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py sum-gradients
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py sharded-resume

``run`` runs the config's stages with ``veripo.recipes.veripo.run`` and rank 0 writes the run directory to
RESULT; ``sum-gradients`` checks ``sum_gradients`` on a toy module and ``sharded-resume`` that a sharded
AdamW (ZeRO-1) resumes from a checkpointed state as a plain AdamW does; each exits non-zero on a mismatch.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # every process computes with one thread, so one and two processes round alike


def run_stages(config: str, pairs: str, result: str) -> None:
    from veripo.config import RunConfig, load
    from veripo.recipes.distributed import init_distributed
    from veripo.recipes.veripo import run

    import veripo.eval.runner as runner

    info = init_distributed()
    decode_batch = runner._decode_batch

    def logged(batch, *args, **kwargs):  # which held-out items this rank decoded, for the test to check
        with open(Path(result).with_suffix(f".eval-rank{info.rank}.log"), "a") as log:
            log.write("".join(f"{s.id}\n" for s in batch))
        return decode_batch(batch, *args, **kwargs)

    runner._decode_batch = logged
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


def check_sharded_resume() -> None:
    """A plain AdamW takes two steps and saves its state; the sharded optimizer of ``build_optimizer`` loads
    it on both ranks, and one more step on both must give the same weights and the same gathered state."""
    from veripo.recipes.common import build_optimizer
    from veripo.recipes.distributed import init_distributed

    info = init_distributed()
    assert info.world == 2, f"run me with 2 processes, got {info.world}"

    def new_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))

    def set_grads(model: torch.nn.Module, step: int) -> None:
        gen = torch.Generator().manual_seed(100 + step)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)

    plain_model = new_model()
    plain = build_optimizer(plain_model, 1e-2, 0.1)  # shard=False: a plain AdamW
    for step in range(2):
        set_grads(plain_model, step)
        plain.step()
    saved = {k: v.clone() for k, v in plain_model.state_dict().items()}
    state = copy.deepcopy(plain.state_dict())  # as torch.save / torch.load would: no tensors shared with `plain`

    sharded_model = new_model()
    sharded_model.load_state_dict(saved)
    sharded = build_optimizer(sharded_model, 1e-2, 0.1, shard=True)
    assert type(sharded).__name__ == "ZeroRedundancyOptimizer", type(sharded)
    sharded.load_state_dict(state)
    set_grads(plain_model, 2)
    set_grads(sharded_model, 2)
    plain.step()
    sharded.step()
    for (name, a), b in zip(plain_model.state_dict().items(), sharded_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7, msg=lambda m: f"rank {info.rank} {name}: {m}")
    sharded.consolidate_state_dict(to=0)
    if info.is_main:
        gathered, expected = sharded.state_dict(), plain.state_dict()
        for index, moments in expected["state"].items():
            for key, value in moments.items():
                torch.testing.assert_close(gathered["state"][index][key], value, rtol=0, atol=1e-7)
    # both ranks leave together: a rank exiting while gloo still serves the other aborts (SIGABRT)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown, where gloo's threads aborted a rank in fresh-clone CI


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 5:
        run_stages(*sys.argv[2:])
    elif sys.argv[1:] == ["sum-gradients"]:
        check_sum_gradients()
    elif sys.argv[1:] == ["sharded-resume"]:
        check_sharded_resume()
    else:
        sys.exit(__doc__)
