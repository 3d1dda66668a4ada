"""A process of the data-parallel test (tests/parallel/test_data_parallel_on_cpu.py).

    python dp_worker.py run CONFIG PAIRS RESULT       # one process, or under torch.distributed.run
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py sum-gradients
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py sharded-resume
    python -m torch.distributed.run --nproc_per_node 2 dp_worker.py fsdp-lockstep DIR
    python -m torch.distributed.run --nproc_per_node 4 dp_worker.py fsdp-lockstep DIR 2 zero  # HSDP 2 x 2, ZeRO-1

``run`` runs the config's stages with ``veripo.recipes.veripo.run`` and rank 0 writes the run directory to
RESULT; ``sum-gradients`` checks ``sum_gradients`` on a toy module and ``sharded-resume`` that a sharded
AdamW (ZeRO-1) resumes from a checkpointed state as a plain AdamW does; ``fsdp-lockstep`` checks weight
sharding (FSDP2; with a group size, hybrid sharding) against one unsharded model and its exact resume; each
exits non-zero on a mismatch.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # every process computes with one thread, so one and two processes round alike


def digit_share(completion: str, sample: object) -> float:
    """The share of digits in a response: an untrained model's responses never earn accuracy or format, but
    their digit shares differ, so GRPO's advantages are not all zero and its steps follow real gradients."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def run_stages(config: str, pairs: str, result: str) -> None:
    from veripo.config import RunConfig, load
    from veripo.parallel import init_distributed
    from veripo.recipes.veripo import run
    from veripo.rewards.registry import register_reward

    import veripo.eval.runner as runner

    info = init_distributed()
    register_reward("digit_share")(digit_share)  # named in the test's config: GRPO's rewards vary in a group
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
    import veripo.parallel.base as distributed
    import veripo.parallel.data_parallel as data_parallel

    info = distributed.init_distributed()
    assert info.world == 2, f"run me with 2 processes, got {info.world}"
    data_parallel.BUCKET_ELEMENTS = 5
    model = torch.nn.ParameterDict({
        "both": torch.nn.Parameter(torch.zeros(2, 2)),
        "rank0_only": torch.nn.Parameter(torch.zeros(3)),
        "unused": torch.nn.Parameter(torch.zeros(4)),
        "frozen": torch.nn.Parameter(torch.zeros(2), requires_grad=False),
    })
    model["both"].grad = torch.full((2, 2), float(info.rank + 1))
    if info.rank == 0:
        model["rank0_only"].grad = torch.full((3,), 5.0)
    data_parallel.sum_gradients(info, model.parameters())
    torch.testing.assert_close(model["both"].grad, torch.full((2, 2), 3.0))
    torch.testing.assert_close(model["rank0_only"].grad, torch.full((3,), 5.0))
    assert model["unused"].grad is None, f"rank {info.rank}: a parameter no rank reached got a gradient"
    assert model["frozen"].grad is None
    assert distributed.gather_objects(info, [f"r{info.rank}a", f"r{info.rank}b"]) == ["r0a", "r1a", "r0b", "r1b"]
    assert distributed.broadcast_object(info, f"dir-of-{info.rank}") == "dir-of-0"
    _leave()


def check_sharded_resume() -> None:
    """A plain AdamW takes two steps and saves its state; the sharded optimizer of ``DataParallel`` with
    ``shard_optimizer`` loads it on both ranks, and one more step on both must give the same weights and the same
    gathered state."""
    from veripo.parallel import DataParallel, ParallelStrategy, init_distributed

    def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, shard: bool = False):
        strategy = DataParallel(info, shard_optimizer=True) if shard else ParallelStrategy()
        strategy.prepare(model)
        return strategy.optimizer(lr, weight_decay, 0.0)[0]

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
    _leave()


def check_fsdp_lockstep(root: str, group_size: int | None = None, zero: bool = False) -> None:
    """Weight sharding (FSDP2) on the tiny model, gradient checkpointing on: each rank stores 1/group of the
    decoder layers' weights, gradients and AdamW moments (group: all ranks, or ``group_size`` for hybrid
    sharding, where the replicas must hold equal shards). Rank 0 trains two groups and rank 1 one (shared
    prefix, micro-batches of 2, a one-token response; with 4 ranks ranks 2 and 3 none), so rank 1 pads its
    call and runs an idle call, ranks 2 and 3 only idle calls (``lockstep``). The summed gradients must equal
    one unsharded model's on all three groups; then a step, a checkpoint in the plain formats, one more step,
    and a fresh sharded model resumed from the checkpoint must take exactly the same last step. With ``zero``
    the whole parameters' AdamW moments are split over the ranks too (``LayerShardedAdamW``): each is held
    by exactly one rank, and the steps must equal an unsharded AdamW's."""
    from veripo.models import build_tiny, load_policy
    from veripo.models.grouped_forward import backward_group, decoder_layers, idle_backward, micro_batch_count
    from veripo.parallel import FullyShardedLayers, ParallelStrategy, init_distributed
    from veripo.parallel import fsdp2 as sharding
    from veripo.recipes.checkpoint import (
        Progress,
        latest_checkpoint,
        load_model_weights,
        load_training_state,
        save_checkpoint,
    )
    from veripo.recipes.common import build_scheduler

    info = init_distributed()
    group = info.world if group_size is None else group_size
    assert info.world in (2, 4) and info.world % group == 0, f"run me with 2 or 4 processes, got {info.world}"
    base = Path(root) / "tiny"
    if info.is_main:
        build_tiny(base, size="tiny", seed=3)
    torch.distributed.barrier()

    def new_model() -> torch.nn.Module:
        model = load_policy(base, dtype="float32", device="cpu").model
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()

    gen = torch.Generator().manual_seed(5)
    groups = []  # (prompt, response ids, mask): G = 3, 1 (one token), 4
    for g, width in ((3, 5), (1, 1), (4, 3)):
        prompt = {"input_ids": torch.randint(10, 200, (1, 6), generator=gen)}
        ids = torch.randint(10, 200, (g, width), generator=gen)
        mask = torch.ones(g, width)
        mask[0, width - 1 :] = 0.0 if width > 1 else 1.0
        groups.append((prompt, ids, mask))

    def loss_fn(mask):
        return lambda logp, _entropy, rows: -(logp * mask[rows]).sum() / 10.0

    def strategy_of(model, sharded: bool):
        strategy = FullyShardedLayers(info, group, zero) if sharded else ParallelStrategy()
        strategy.prepare(model)  # FullyShardedLayers: shards the decoder layers
        return strategy

    def train(strategy, mine) -> None:
        model = strategy.model
        counts = [micro_batch_count(ids.shape[0], 2) for _, ids, _ in mine]

        def idle(count: int) -> None:
            idle_backward(model, count, True, strategy.passes)

        for (prompt, ids, mask), micro_batches in strategy.lockstep_calls(mine, counts, idle):
            backward_group(model, prompt, ids, mask, loss_fn(mask), micro_batch=2, min_micro_batches=micro_batches,
                           passes=strategy.passes)

    def build_optimizer(strategy):
        return strategy.optimizer(1e-3, 0.1, 0.0)[0]

    reference_strategy = strategy_of(new_model(), sharded=False)
    reference = reference_strategy.model
    train(reference_strategy, groups)  # one unsharded model, all groups
    strategy = strategy_of(new_model(), sharded=True)
    model = strategy.model
    assert strategy.lockstep([2, 2] if info.rank == 0 else [1]) == [2, 2]
    train(strategy, info.shard(groups))
    strategy.reduce_gradients()
    layer_params = [p for layer in decoder_layers(model) for p in layer.parameters()]
    held = sum(p.to_local().numel() for p in layer_params)  # what this rank stores (numel() is the whole)
    held_grads = sum(p.grad.to_local().numel() for p in layer_params)
    whole = sum(p.numel() for p in layer_params)
    assert 0.9 * whole / group < held < 1.1 * whole / group and held_grads == held, (held, held_grads, whole)
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        grad = p.grad.full_tensor() if isinstance(p.grad, sharding.DTensor) else p.grad
        assert (grad is None) == (ref.grad is None), f"{name}: gradient presence differs"
        if grad is not None:
            torch.testing.assert_close(grad, ref.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")

    def step(strategy, optimizer, scheduler) -> float:
        norm = strategy.clip_gradients(0.05)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    optimizer = build_optimizer(strategy)
    assert isinstance(optimizer, sharding.LayerShardedAdamW) is zero
    scheduler = build_scheduler(optimizer, "cosine", 0, 4)
    reference_optimizer = build_optimizer(reference_strategy)
    reference_scheduler = build_scheduler(reference_optimizer, "cosine", 0, 4)
    norm = step(strategy, optimizer, scheduler)
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None]))
    assert abs(norm - expected) <= 1e-5 * expected, (norm, expected)  # each shard counted once, replicas or not
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05, foreach=False)
    reference_optimizer.step()
    reference_scheduler.step()
    stepped = sharding.full_model_state(model)
    if info.is_main:  # the first step equals an unsharded AdamW's (ZeRO-1 parts, FSDP2 shards or both)
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(stepped[name], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"step {name}: {m}")
    layer_state = optimizer.layers.state if zero else optimizer.state
    moments = sum(layer_state[p]["exp_avg"].to_local().numel() for p in layer_params)
    assert moments == held, (moments, held)  # each rank keeps the AdamW moments of its shards only
    if zero:  # every whole parameter with a gradient has its moments on exactly one rank
        whole = [p for p in model.parameters() if not isinstance(p, sharding.DTensor) and p.requires_grad]
        mine = torch.tensor([float(p in optimizer.whole.optim.state) for p in whole])
        torch.distributed.all_reduce(mine)
        expected_whole = [float(ref.grad is not None) for ref, p in zip(reference.parameters(), model.parameters())
                          if not isinstance(p, sharding.DTensor) and p.requires_grad]
        assert mine.tolist() == expected_whole, (mine.tolist(), expected_whole)
        held_whole = sum(p.numel() for p in whole if p in optimizer.whole.optim.state)
        assert held_whole < sum(p.numel() for p, n in zip(whole, expected_whole) if n), held_whole
    model_state = sharding.full_model_state(model)
    optimizer_state = sharding.full_optimizer_state(model, optimizer)
    stage = Path(root) / "stage"
    if info.is_main:
        save_checkpoint(stage, model, None, optimizer, scheduler, Progress(step=1, unit=1),
                        model_state=model_state, optimizer_state=optimizer_state)
        numbered = optimizer_state["param_groups"][0]["params"]  # the plain format: loads into a plain AdamW
        plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1)) for _ in numbered])
        plain.load_state_dict(torch.load(latest_checkpoint(stage) / "optimizer.pt", weights_only=True))
    torch.distributed.barrier()
    train(strategy, info.shard(groups))
    strategy.reduce_gradients()
    step(strategy, optimizer, scheduler)
    finished = sharding.full_model_state(model)
    reference_optimizer.zero_grad(set_to_none=True)
    train(reference_strategy, groups)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05, foreach=False)
    reference_optimizer.step()  # the second step runs at the cosine schedule's next learning rate
    if info.is_main:
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(finished[name], value, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"second step {name}: {m}")

    resumed_strategy = strategy_of(new_model(), sharded=True)
    resumed = resumed_strategy.model
    resumed_optimizer = build_optimizer(resumed_strategy)
    resumed_scheduler = build_scheduler(resumed_optimizer, "cosine", 0, 4)
    ckpt = latest_checkpoint(stage)
    load_model_weights(resumed, ckpt, resumed_strategy)
    load_training_state(ckpt, resumed_optimizer, resumed_scheduler, resumed_strategy)
    train(resumed_strategy, info.shard(groups))
    resumed_strategy.reduce_gradients()
    step(resumed_strategy, resumed_optimizer, resumed_scheduler)
    again = sharding.full_model_state(resumed)
    if group < info.world:  # hybrid sharding: rank r and rank r + group hold the same shard of every layer
        local = torch.cat([p.to_local().reshape(-1) for p in layer_params]).detach()
        every = [torch.empty_like(local) for _ in range(info.world)]
        torch.distributed.all_gather(every, local)
        for rank in range(group, info.world):
            torch.testing.assert_close(every[rank], every[rank % group], rtol=0, atol=0,
                                       msg=lambda m: f"replica shards differ (ranks {rank % group}, {rank}): {m}")
    if info.is_main:
        moved = max(float((finished[k] - model_state[k]).abs().max()) for k in finished)
        assert moved > 1e-4, f"the last step moved no weight by more than {moved:.2g}"
        for name, value in finished.items():
            torch.testing.assert_close(again[name], value, rtol=0, atol=0, msg=lambda m: f"resumed {name}: {m}")
    _leave()


def _leave() -> None:
    from veripo.parallel import finish_process

    finish_process(0)  # both ranks leave together, skipping interpreter teardown (gloo aborted ranks there)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 5:
        run_stages(*sys.argv[2:])
    elif sys.argv[1:] == ["sum-gradients"]:
        check_sum_gradients()
    elif sys.argv[1:] == ["sharded-resume"]:
        check_sharded_resume()
    elif sys.argv[1:2] == ["fsdp-lockstep"] and len(sys.argv) in (3, 4, 5):
        check_fsdp_lockstep(sys.argv[2], int(sys.argv[3]) if len(sys.argv) >= 4 else None,
                            zero=sys.argv[4:] == ["zero"])
    else:
        sys.exit(__doc__)
