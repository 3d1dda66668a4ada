"""A process of the master-weights test (tests/parallel/test_master_weights_on_cpu.py).

    python master_weights_worker.py BACKEND MODEL_DIR OUT_DIR                    # BACKEND single
    python -m torch.distributed.run --nproc_per_node 2 master_weights_worker.py BACKEND MODEL_DIR OUT_DIR
                                                                                 # zero1 | fsdp2 | deepspeed

For each precision (``bf16-master-fp32``: bf16 compute over float32 masters; ``bf16-pure``: weights and AdamW
state in bf16; ``fp32``: the reference) it loads the tiny model from MODEL_DIR through the strategy that
``make_strategy`` picks for BACKEND, takes ``STEPS`` AdamW steps at lr ``LR`` on one fixed batch (every rank
the same batch with its loss divided by the ranks, so the summed gradient is one process's), and rank 0 saves
the whole master weights and the dtypes of the weights and AdamW moments to ``OUT_DIR/<precision>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

STEPS = 10
LR = 1e-6
PRECISIONS = {"fp32": ("float32", "float32"), "bf16-master-fp32": ("bfloat16", "float32"),
              "bf16-pure": ("bfloat16", "bfloat16")}


def fixed_batch(vocab: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    prompt = {"input_ids": torch.randint(10, vocab - 10, (1, 24), generator=gen)}
    ids = torch.randint(10, vocab - 10, (4, 16), generator=gen)
    return prompt, ids, torch.ones(4, 16)


def train(backend: str, model_dir: str, compute: str, master: str) -> tuple[dict, dict]:
    """STEPS steps; (whole master weights, dtypes) on rank 0, ({}, {}) elsewhere."""
    from veripo.config.schema import DistributedConfig
    from veripo.models import load_policy
    from veripo.models.grouped_forward import backward_group, response_log_probs
    from veripo.parallel import Precision, init_distributed, make_strategy
    from veripo.recipes.common import build_scheduler

    info = init_distributed()
    distributed = DistributedConfig(shard_optimizer=backend == "zero1", shard_weights=backend == "fsdp2",
                                    deepspeed_zero3=backend == "deepspeed")
    precision = Precision(getattr(torch, compute), getattr(torch, master))
    strategy = make_strategy(distributed, os.environ, info, precision)
    expected_kind = {"single": "ParallelStrategy", "zero1": "DataParallel", "fsdp2": "FullyShardedLayers",
                     "deepspeed": "DeepSpeedZero3"}[backend]
    assert type(strategy).__name__ == expected_kind, (backend, type(strategy).__name__)
    model = load_policy(model_dir, dtype=str(strategy.load_dtype).removeprefix("torch."), device="cpu").model.train()
    strategy.prepare(model)
    optimizer, _ = strategy.optimizer(LR, 0.0, 0.0)
    scheduler = build_scheduler(optimizer, "constant", 0, STEPS)
    prompt, ids, mask = fixed_batch(model.config.text_config.vocab_size)

    def loss_fn(logp: torch.Tensor, _entropy: object, rows: torch.Tensor) -> torch.Tensor:
        return -(logp * mask[rows]).sum() / mask.sum() / info.world

    seen: set[str] = set()  # the dtype the layers compute in: bf16 for both bf16 runs
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: seen.add(str(out.dtype)))
    held: set[str] = set()  # a decoder layer's weights as its forward sees them (FSDP2: all-gathered in bf16)
    projection = model.model.language_model.layers[0].self_attn.q_proj
    layer_hook = projection.register_forward_pre_hook(lambda module, _i: held.add(str(module.weight.dtype)))
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        backward_group(model, prompt, ids, mask, loss_fn, passes=strategy.passes)
        strategy.step(optimizer, scheduler, 0.0)
    hook.remove()
    layer_hook.remove()
    gathered: set[str] = set()  # sampling, evaluation and old/reference log-probs run inside gathered_weights
    hook = model.lm_head.register_forward_hook(lambda _m, _i, out: gathered.add(str(out.dtype)))
    with strategy.gathered_weights():
        logp = response_log_probs(model, prompt, ids, mask).log_probs
    hook.remove()
    assert bool(torch.isfinite(logp).all()), "gathered forward: non-finite log-probs"
    weights, moments = strategy.full_state(optimizer)
    if weights is None:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if moments is None:
        moments = optimizer.state_dict()
    # a stage boundary: the next stage's optimizer starts from these masters, not from their bf16 rounding
    next_stage, _ = strategy.optimizer(LR, 0.0, 0.0)
    again, _ = strategy.full_state(next_stage)
    if again is not None and info.is_main:
        for name, value in again.items():
            torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=lambda m: f"next stage {name}: {m}")
    if not info.is_main:
        return {}, {}
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    moment_dtypes = sorted({str(m["exp_avg"].dtype) for m in moments["state"].values()})
    dtypes = {"weights": sorted({str(weights[k].dtype) for k in weights if k in trained}), "moments": moment_dtypes,
              "compute": sorted(seen), "gathered": sorted(gathered), "layer_weights": sorted(held)}
    return {k: v.float() for k, v in weights.items() if k in trained}, dtypes


def main(backend: str, model_dir: str, out_dir: str) -> None:
    from veripo.parallel import finish_process

    for name, (compute, master) in PRECISIONS.items():
        weights, dtypes = train(backend, model_dir, compute, master)
        if weights:
            torch.save({"weights": weights, "dtypes": dtypes}, Path(out_dir) / f"{name}.pt")
    finish_process(0)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("single", "zero1", "fsdp2", "deepspeed"):
        sys.exit(__doc__)
    main(*sys.argv[1:])
