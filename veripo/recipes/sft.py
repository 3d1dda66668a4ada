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

from typing import Any

import torch

from veripo.data.loaders import DataError
from veripo.data.records import Sample
from veripo.models.grouped_forward import backward_group
from veripo.recipes.checkpoint import Progress
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.sizing import batch_size_of
from veripo.recipes.stage_loop import Optimization, StageLoop, epoch_batch, run_training_stage


def reference_completion(sample: Sample) -> str:
    """The target text for a sample with a reference chain of thought."""
    return f"<think>{sample.reasoning}</think><answer>{sample.answer}</answer>"


def target_ids(tokenizer, sample: Sample) -> list[int]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer(reference_completion(sample), add_special_tokens=False)["input_ids"]
    return ids + ([end] if isinstance(end, int) and end >= 0 else [])


class SFTStage:
    """A batch of ``sft.batch_size`` samples is one optimizer step; each sample is one forward/backward."""

    outputs = ["metrics.jsonl"]
    time_budget_s = None

    def __init__(self, ctx: StageContext, samples: list[Sample]) -> None:
        self.ctx, self.samples, self.sft = ctx, samples, ctx.section("sft")
        self.title = f"SFT {ctx.stage.name}"
        self.size = batch_size_of(len(samples), self.sft.batch_size, self.sft.epochs, self.sft.max_steps)
        self.units = self.steps = self.size.units
        self.targets = {s.id: target_ids(ctx.policy.tokenizer, s) for s in samples}

    def start(self, loop: StageLoop) -> None:
        pass

    def numbers(self, progress: Progress) -> dict[str, Any]:
        return {}

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        ctx, model = self.ctx, self.ctx.policy.model
        epoch, batch = epoch_batch(self.samples, unit, self.sft.batch_size, ctx.cfg.seed, ctx.stage.name)
        n_tokens = float(sum(len(self.targets[s.id]) for s in batch))
        loss_sum = 0.0

        def backward(sample: Sample, micro_batches: int) -> None:
            nonlocal loss_sum
            ids = torch.tensor([self.targets[sample.id]])
            mask = torch.ones_like(ids, dtype=torch.float32)
            # one response per prompt: a single full forward is cheaper than the shared-prefix split (prompt
            # pass + continuation), about 15% per step on the demo's tiny model
            stats = backward_group(model, ctx.encode(sample), ids, mask,
                                   lambda logp, _e, _rows: -(logp.sum()) / n_tokens, shared_prefix=False,
                                   min_micro_batches=micro_batches, passes=ctx.parallel.passes)
            loss_sum += float(stats.loss)

        mine = ctx.dist.shard(batch)  # one micro-batch per sample
        grad_norm, lr = loop.optimizer_step(mine, [1] * len(mine), False, backward)
        loss = sum(ctx.parallel.gather([loss_sum]))
        loop.metrics_row("sft", epoch=epoch, lr=lr, loss=loss, grad_norm=grad_norm, tokens=n_tokens)
        return {"loss": loss}


def run_sft(ctx: StageContext) -> StageResult:
    samples = [s for s in ctx.samples if s.reasoning]
    if not samples:
        raise DataError(f"stage '{ctx.stage.name}': SFT needs samples with a reference chain of thought "
                         f"(Sample.reasoning); none of {len(ctx.samples)} has one")
    sft = ctx.section("sft")
    return run_training_stage(ctx, SFTStage(ctx, samples), Optimization.of(sft))
