"""SFT warm start: teacher-forced next-token loss on reference chains of thought.

The paper starts GRPO from the instruct model; its discussion recommends an SFT stage for weaker models,
and a randomly initialised tiny model cannot follow the ``<think>...</think><answer>...</answer>`` format
at all, so the demo starts here. Targets are ``<think>{reasoning}</think><answer>{answer}</answer>`` plus the
end-of-turn token (samples need ``reasoning``: the synthetic tasks carry it; Video-R1-COT rows carry it
in ``process``). Loss: token-mean over the batch's response tokens; the prompt (video included) is
context only. Batches are seeded permutations per epoch; a checkpoint after every ``save_every`` batches
makes a killed stage resume exactly.
"""

from __future__ import annotations

import math

import torch

from veripo.algos.logprobs import backward_group
from veripo.data.jsonl import JsonlWriter
from veripo.data.records import Sample
from veripo.recipes.common import Stopwatch, build_scheduler, progress_bar
from veripo.recipes.context import (
    StageContext,
    StageResult,
    epoch_batch,
    optimizer_step,
    resume_stage,
    save_if_due,
)
from veripo.recipes.distributed import gather_objects
from veripo.recipes.sharding import lockstep_calls

OUTPUTS = ["metrics.jsonl"]


def reference_completion(sample: Sample) -> str:
    """The target text for a sample with a reference chain of thought."""
    return f"<think>{sample.reasoning}</think><answer>{sample.answer}</answer>"


def target_ids(tokenizer, sample: Sample) -> list[int]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer(reference_completion(sample), add_special_tokens=False)["input_ids"]
    return ids + ([end] if isinstance(end, int) and end >= 0 else [])


def run_sft(ctx: StageContext) -> StageResult:
    sft = ctx.section("sft")
    model, tokenizer = ctx.policy.model, ctx.policy.tokenizer
    samples = [s for s in ctx.samples if s.reasoning]
    if not samples:
        raise ValueError(f"stage '{ctx.stage.name}': SFT needs samples with a reference chain of thought (Sample.reasoning); none of {len(ctx.samples)} has one")
    per_epoch = math.ceil(len(samples) / sft.batch_size)
    total = per_epoch * sft.epochs if sft.max_steps is None else min(sft.max_steps, per_epoch * sft.epochs)
    optimizer = ctx.optimizer(sft.lr, sft.weight_decay, sft.max_grad_norm)
    scheduler = build_scheduler(optimizer, sft.lr_schedule, sft.warmup_steps, total)
    progress = resume_stage(ctx, optimizer, scheduler, OUTPUTS)
    if progress.done:
        return StageResult(steps=progress.step, numbers={"wall_time_s": progress.extra.get("time_s", 0.0)})
    clock = Stopwatch(progress.extra.get("time_s", 0.0))
    targets = {s.id: target_ids(tokenizer, s) for s in samples}
    model.train()
    writer = JsonlWriter(ctx.stage_dir / "metrics.jsonl", fsync="batch") if ctx.dist.is_main else None
    if writer:
        writer.open()
    try:
        with progress_bar(f"SFT {ctx.stage.name}", total, ctx.show_progress and ctx.dist.is_main) as bar:
            bar.set_completed(progress.unit)
            for unit in range(progress.unit, total):
                epoch, batch = epoch_batch(samples, unit, sft.batch_size, ctx.cfg.seed, ctx.stage.name)
                n_tokens = float(sum(len(targets[s.id]) for s in batch))
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                mine = ctx.dist.shard(batch)  # one micro-batch per sample
                for sample, micro_batches in lockstep_calls(ctx.dist, model, mine, [1] * len(mine),
                                                            shared_prefix=False):
                    ids = torch.tensor([targets[sample.id]])
                    mask = torch.ones_like(ids, dtype=torch.float32)
                    # one response per prompt: a single full forward is cheaper than the shared-prefix
                    # split (prompt pass + continuation), about 15% per step on the demo's tiny model
                    stats = backward_group(model, ctx.encode(sample), ids, mask,
                                           lambda logp, _e, _rows: -(logp.sum()) / n_tokens, shared_prefix=False,
                                           min_micro_batches=micro_batches)
                    loss_sum += float(stats.loss)
                loss = sum(gather_objects(ctx.dist, [loss_sum]))
                grad_norm, lr = optimizer_step(ctx, optimizer, scheduler, sft.max_grad_norm, progress)
                progress.unit = unit + 1
                if writer:
                    writer.write({"stage": ctx.stage.name, "kind": "sft", "step": progress.step,
                                  "global_step": progress.global_step, "epoch": epoch, "lr": lr, "loss": loss,
                                  "grad_norm": grad_norm, "tokens": n_tokens, "time_s": clock.elapsed()})
                bar.advance(1, loss=loss)
                save_if_due(ctx, progress, last=progress.unit == total, every=sft.save_every, writers=[writer] if writer else [],
                            optimizer=optimizer, scheduler=scheduler, outputs=OUTPUTS, clock=clock)
    finally:
        if writer:
            writer.close()
    return StageResult(steps=progress.step, numbers={"wall_time_s": clock.elapsed()})
