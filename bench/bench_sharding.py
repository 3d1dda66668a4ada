"""Weight sharding (FSDP2) against plain data parallel: what each rank holds, and time per optimizer step.

    .venv/bin/python bench/bench_sharding.py [--size small] [--steps 6] [--processes 2]

Launches itself under ``torch.distributed.run`` three times, on CPU over gloo: data parallel, the decoder
layers sharded (``distributed.shard_weights``), and sharded with ``distributed.shard_optimizer`` as well (the
whole parameters' AdamW moments split over the ranks). Every rank runs the same GRPO-shaped work per step
(one question with G = 8 responses, shared prefix, micro-batches of 4), then the recipes' optimizer step
(gradients summed, clipped, AdamW). Printed per mode: the bytes one rank holds in weights, gradients and
AdamW moments (local shards for sharded parameters), the peak resident memory of that rank, the median
time of a step after one warm-up step, and the ratios of each sharded mode to data parallel. On a 2-core machine two
processes already fill the cores, so the times mostly show the cost of the per-layer collectives.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _held_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def worker(mode: str, size: str, steps: int, out: str) -> None:
    from veripo.models import build_tiny, load_policy
    from veripo.models.grouped_forward import backward_group
    from veripo.parallel import DataParallel, FullyShardedLayers, init_distributed
    from veripo.parallel.fsdp2 import LayerShardedAdamW

    torch.set_num_threads(1)
    info = init_distributed()
    base = Path(out).with_suffix("") / "model"
    if info.is_main and not (base / "config.json").exists():
        build_tiny(base, size=size, seed=0)
    torch.distributed.barrier()
    model = load_policy(base, dtype="float32", device="cpu").model.train()
    strategy = (FullyShardedLayers(info, info.world, shard_optimizer=mode == "fsdp2+zero1")
                if mode.startswith("fsdp2") else DataParallel(info))
    strategy.prepare(model)
    optimizer = strategy.optimizer(1e-4, 0.0, 1.0)[0]
    parts = [optimizer.layers, optimizer.whole.optim] if isinstance(optimizer, LayerShardedAdamW) else [optimizer]
    gen = torch.Generator().manual_seed(info.rank)
    prompt = {"input_ids": torch.randint(10, 200, (1, 96), generator=gen)}
    responses = torch.randint(10, 200, (8, 48), generator=gen)
    mask = torch.ones(8, 48)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        backward_group(model, prompt, responses, mask, lambda logp, _e, _rows: -logp.sum() / 1000.0, micro_batch=4,
                       passes=strategy.passes)
        strategy.reduce_gradients()
        strategy.clip_gradients(1.0)
        optimizer.step()
        held_grads = _held_bytes(p.grad for p in model.parameters())
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    result = {
        "weights": _held_bytes(model.parameters()),
        "grads": held_grads,
        "adamw": _held_bytes(v for part in parts for state in part.state.values() for k, v in state.items()
                             if k != "step"),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": statistics.median(times[1:]),
    }
    every = [None] * info.world
    torch.distributed.all_gather_object(every, result)
    if info.is_main:
        Path(out).write_text(json.dumps(every))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.steps, args.out)
        return 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("data-parallel", "fsdp2", "fsdp2+zero1"):
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.processes), __file__, "--worker", mode, "--size", args.size, "--steps", str(args.steps),
                   "--out", str(out)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return done.returncode
            results[mode] = json.loads(out.read_text())
    print(f"{args.processes} CPU processes over gloo, tiny model '{args.size}', {args.steps} steps after a warm-up; "
          "rank 0 (MiB / seconds):")
    keys = ("weights", "grads", "adamw", "peak_rss", "step_s")
    print(f"{'':16}" + "".join(f"{k:>12}" for k in keys))
    for mode, ranks in results.items():
        row = ranks[0]
        print(f"{mode:16}" + "".join(f"{row[k] / 2**20:12.2f}" if k != "step_s" else f"{row[k]:12.3f}" for k in keys))
    dp = results["data-parallel"][0]
    for mode in ("fsdp2", "fsdp2+zero1"):
        print(f"{mode + ' / dp':16}" + "".join(f"{results[mode][0][k] / dp[k]:12.2f}" for k in keys))
    for mode, ranks in results.items():  # ZeRO-1 splits by whole parameters, so the shares can be uneven
        print(f"AdamW MiB per rank, {mode}: " + ", ".join(f"{r['adamw'] / 2**20:.2f}" for r in ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
