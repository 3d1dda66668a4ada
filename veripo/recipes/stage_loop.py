"""The one loop every training stage runs (SFT, GRPO, DPO): optimizer and schedule from the parallel strategy,
resume from the newest checkpoint, work units in order, optimizer steps in lockstep across ranks, metric rows,
a progress bar and checkpoints.

A recipe supplies a ``TrainingStage``: how many units the stage has and how one unit turns into optimizer
steps (SFT and DPO: a batch is one step; GRPO: a rollout batch is sampled, scored and cut into steps). Inside
``run_unit`` every step goes through ``StageLoop.optimizer_step``, which zeroes the gradients, runs the
recipe's backward calls in lockstep (``ParallelStrategy.lockstep_calls``), and steps through the strategy.

Units are the resume granularity: a checkpoint after every ``save_every`` units and after the last one holds
the weights, the optimizer and schedule, the counters and the byte sizes of the stage's output files, which a
resumed stage cuts back to; every random draw is seeded from the run seed, the stage and the unit, so the
resumed stage redoes exactly the lost work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from veripo.data.jsonl import JsonlWriter
from veripo.models.grouped_forward import idle_backward
from veripo.recipes.checkpoint import (
    Progress,
    latest_checkpoint,
    load_model_weights,
    load_progress,
    load_training_state,
    output_sizes,
    save_checkpoint,
    truncate_outputs,
)
from veripo.recipes.common import Stopwatch, build_scheduler, generator, progress_bar
from veripo.recipes.context import StageContext, StageResult

T = TypeVar("T")


@dataclass(frozen=True)
class Optimization:
    """A stage's optimizer, schedule and checkpoint settings (the fields its config section shares)."""

    lr: float
    weight_decay: float
    max_grad_norm: float
    lr_schedule: str
    warmup_steps: int
    save_every: int  # units between checkpoints

    @classmethod
    def of(cls, section: Any) -> Optimization:
        return cls(section.lr, getattr(section, "weight_decay", 0.0), section.max_grad_norm, section.lr_schedule,
                   section.warmup_steps, section.save_every)


class TrainingStage(Protocol):
    """What a recipe supplies to ``run_training_stage``."""

    outputs: list[str]  # files in the stage directory: metrics.jsonl first, cut back to a checkpoint on resume
    title: str  # the progress bar's
    units: int  # work units of the stage
    steps: int  # optimizer steps of the whole stage (for the schedule)
    time_budget_s: float | None  # end the stage after the unit that passes this many seconds

    def start(self, loop: StageLoop) -> None:
        """Before the first unit (also after a resume): reference log-probs, engines, ..."""

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        """Do unit ``unit`` (its optimizer steps go through ``loop.optimizer_step``); returns progress-bar fields."""

    def numbers(self) -> dict[str, Any]:
        """Numbers for the run summary besides the wall time."""


@dataclass
class StageLoop:
    """The running stage as a recipe's ``run_unit`` sees it."""

    ctx: StageContext
    optimizer: torch.optim.Optimizer
    scheduler: Any
    progress: Progress
    clock: Stopwatch
    max_grad_norm: float
    writers: dict[str, JsonlWriter] = field(default_factory=dict)  # rank 0 only

    def optimizer_step(self, work: list[T], micro_batches: list[int], shared_prefix: bool,
                       backward: Callable[[T, int], None]) -> tuple[float, float]:
        """One optimizer step: zero the gradients, run ``backward(item, min_micro_batches)`` for this rank's
        ``work`` items in lockstep with the other ranks (``micro_batches``: the micro-batches of each item's
        ``backward_group``), then reduce, clip and step through the strategy; (gradient norm, lr used)."""
        parallel, model = self.ctx.parallel, self.ctx.policy.model
        self.optimizer.zero_grad(set_to_none=True)

        def idle(count: int) -> None:  # keep the other ranks' collectives company
            idle_backward(model, count, shared_prefix, parallel.passes)

        for item, count in parallel.lockstep_calls(work, micro_batches, idle):
            backward(item, count)
        grad_norm, lr = parallel.step(self.optimizer, self.scheduler, self.max_grad_norm)
        self.progress.step += 1
        self.progress.global_step += 1
        return grad_norm, lr

    def write(self, output: str, record: Any) -> None:
        """Append one record to an output file (rank 0 writes; the others skip)."""
        if output in self.writers:
            self.writers[output].write(record)

    def write_many(self, output: str, records: list[Any]) -> None:
        if output in self.writers:
            self.writers[output].write_many(records)

    def metrics_row(self, kind: str, **fields: Any) -> None:
        """One row of ``metrics.jsonl`` for the step just taken: stage, kind, counters, ``fields``, time; the
        same numbers go to the run's experiment trackers."""
        row = {"stage": self.ctx.stage.name, "kind": kind, "step": self.progress.step,
               "global_step": self.progress.global_step, **fields, "time_s": self.clock.elapsed()}
        self.write("metrics.jsonl", row)
        if "metrics.jsonl" in self.writers:
            self.ctx.trackers.log_row(row)


def run_training_stage(ctx: StageContext, stage: TrainingStage, settings: Optimization) -> StageResult:
    """Run (or resume, or skip when finished) a training stage; see the module docstring."""
    optimizer, note = ctx.parallel.optimizer(settings.lr, settings.weight_decay, settings.max_grad_norm)
    if note:
        ctx.log(note)
    scheduler = build_scheduler(optimizer, settings.lr_schedule, settings.warmup_steps, stage.steps)
    progress = resume_stage(ctx, optimizer, scheduler, stage.outputs)
    outputs = {name: ctx.stage_dir / name for name in stage.outputs}
    if progress.done:
        return StageResult(steps=progress.step, outputs=outputs,
                           numbers={**stage.numbers(), "wall_time_s": progress.extra.get("time_s", 0.0)})
    clock = Stopwatch(progress.extra.get("time_s", 0.0))
    writers = {name: JsonlWriter(path, fsync="batch") for name, path in outputs.items()} if ctx.dist.is_main else {}
    loop = StageLoop(ctx, optimizer, scheduler, progress, clock, settings.max_grad_norm, writers)
    stage.start(loop)
    ctx.policy.model.train()
    for writer in writers.values():
        writer.open()
    try:
        # a time budget ends the stage by the clock: no total, so no made-up time remaining
        total = None if stage.time_budget_s else stage.units
        with progress_bar(stage.title, total, ctx.show_progress and ctx.dist.is_main) as bar:
            bar.set_completed(progress.unit)
            for unit in range(progress.unit, stage.units):
                fields = stage.run_unit(unit, loop)
                progress.unit = unit + 1
                bar.advance(1, **fields)
                over_budget = stage.time_budget_s is not None and clock.elapsed() >= stage.time_budget_s
                last = progress.unit == stage.units or (
                    stage.time_budget_s is not None and any(ctx.parallel.gather([over_budget])))
                save_if_due(ctx, loop, last=last, every=settings.save_every)
                if last:
                    break
    finally:
        for writer in writers.values():
            writer.close()
    return StageResult(steps=progress.step, outputs=outputs, numbers={**stage.numbers(), "wall_time_s": clock.elapsed()})


def resume_stage(ctx: StageContext, optimizer: Any, scheduler: Any, outputs: list[str]) -> Progress:
    """Restore the newest checkpoint of this stage (weights, optimizer, counters) and cut the ``outputs``
    files back to it; without a checkpoint the stage starts over and its outputs are emptied."""
    ckpt = latest_checkpoint(ctx.stage_dir)
    if ckpt is None:
        if ctx.dist.is_main:
            truncate_outputs(ctx.stage_dir, {name: 0 for name in outputs})
        return Progress(global_step=ctx.global_step)
    load_model_weights(ctx.policy.model, ckpt, ctx.parallel)
    load_training_state(ckpt, optimizer, scheduler, ctx.parallel)
    progress = load_progress(ckpt)
    if ctx.dist.is_main:
        truncate_outputs(ctx.stage_dir, progress.outputs)
    ctx.log(f"resumed from {ckpt.name} (unit {progress.unit}, step {progress.step})")
    return progress


def save_if_due(ctx: StageContext, loop: StageLoop, *, last: bool, every: int) -> None:
    """Checkpoint after every ``every`` units and at the end (outputs flushed first, their sizes recorded)."""
    progress = loop.progress
    if not (last or progress.unit % max(1, every) == 0):
        return
    for writer in loop.writers.values():
        writer.sync()
    progress.done = last
    progress.extra["time_s"] = loop.clock.elapsed()
    model_state, optimizer_state = ctx.parallel.full_state(loop.optimizer)  # a collective: every rank
    if ctx.dist.is_main:
        progress.outputs = output_sizes(ctx.stage_dir, list(loop.writers))
        save_checkpoint(ctx.stage_dir, ctx.policy.model, ctx.policy.processor, loop.optimizer, loop.scheduler,
                        progress, model_state=model_state, optimizer_state=optimizer_state)


def epoch_batch(items: list[Any], unit: int, batch_size: int, seed: int, stage: str) -> tuple[int, list[Any]]:
    """Batch ``unit`` of a stage that walks ``items`` in a fresh seeded permutation every epoch."""
    per_epoch = -(-len(items) // batch_size)
    epoch, b = divmod(unit, per_epoch)
    order = torch.randperm(len(items), generator=generator(seed, stage, "order", epoch)).tolist()
    return epoch, [items[i] for i in order[b * batch_size : (b + 1) * batch_size]]


def epoch_units(items: int, batch_size: int, epochs: int, max_steps: int | None = None) -> int:
    """Batches of ``batch_size`` over ``epochs`` passes, at most ``max_steps``."""
    total = math.ceil(items / batch_size) * epochs
    return total if max_steps is None else min(max_steps, total)

