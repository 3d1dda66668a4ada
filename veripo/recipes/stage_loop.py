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

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch

from veripo.data.jsonl import JsonlWriter
from veripo.errors import Stopped
from veripo.models.grouped_forward import idle_backward
from veripo.models.vision_cache import vision_cache_counts
from veripo.recipes.checkpoint import (
    Progress,
    latest_checkpoint,
    load_model_weights,
    load_progress,
    load_training_state,
    output_sizes,
    save_best,
    save_checkpoint,
    truncate_outputs,
)
from veripo.recipes.common import Stopwatch, build_scheduler, generator, progress_bar
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.sizing import StageSize

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
    save_every_s: float | None = None  # also a checkpoint after the first unit this many seconds past the last
    eval_every: int | None = None  # optimizer steps between held-out evaluations (the best weights are kept)

    @classmethod
    def of(cls, section: Any) -> Optimization:
        return cls(section.lr, getattr(section, "weight_decay", 0.0), section.max_grad_norm, section.lr_schedule,
                   section.warmup_steps, section.save_every, getattr(section, "save_every_s", None),
                   section.eval_every)


class TrainingStage(Protocol):
    """What a recipe supplies to ``run_training_stage``."""

    outputs: list[str]  # files in the stage directory: metrics.jsonl first, cut back to a checkpoint on resume
    title: str  # the progress bar's
    units: int  # work units of the stage
    steps: int  # optimizer steps of the whole stage (for the schedule)
    size: StageSize  # how units and steps follow from the stage's data (veripo.recipes.sizing)
    time_budget_s: float | None  # end the stage after the unit that passes this many seconds

    def start(self, loop: StageLoop) -> None:
        """Before the first unit (also after a resume): reference log-probs, engines, ..."""

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        """Do unit ``unit`` (its optimizer steps go through ``loop.optimizer_step``); returns progress-bar fields."""

    def numbers(self, progress: Progress) -> dict[str, Any]:
        """Numbers for the run summary besides the wall time (``progress``: the stage's counters, restored from
        its checkpoint when a resumed stage had already finished)."""


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
    saved_at_s: float = 0.0  # the stage clock at the last checkpoint (or the start)

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
               "global_step": self.progress.global_step, **fields, **vision_cache_counts(self.ctx.policy.model),
               "time_s": self.clock.elapsed()}
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
    what = "pairs" if ctx.stage.kind == "dpo" else "questions"
    ctx.log(f"{stage.size.units} units, {stage.steps} optimizer steps: {stage.size.drawn} {what} drawn from "
            f"{stage.size.items} ({stage.size.passes:.3g} passes; {stage.size.basis})")
    if (small := stage.size.warning(ctx.stage.name, what)) and ctx.dist.is_main:
        ctx.console.print(f"[bold yellow]{small}[/bold yellow]")
    if progress.done:
        return StageResult(steps=progress.step, outputs=outputs,
                           numbers={**stage.numbers(progress), "wall_time_s": progress.extra.get("time_s", 0.0)})
    clock = Stopwatch(progress.extra.get("time_s", 0.0))
    writers = {name: JsonlWriter(path, fsync="batch") for name, path in outputs.items()} if ctx.dist.is_main else {}
    loop = StageLoop(ctx, optimizer, scheduler, progress, clock, settings.max_grad_norm, writers,
                     saved_at_s=clock.elapsed())
    stage.start(loop)
    ctx.policy.model.train()
    for writer in writers.values():
        writer.open()
    try:
        # a time budget ends the stage by the clock: no total, so no made-up time remaining
        total = None if stage.time_budget_s else stage.units
        with progress_bar(stage.title, total, ctx.show_progress and ctx.dist.is_main) as bar, \
                stop_requests() as stop:
            bar.set_completed(progress.unit)
            for unit in range(progress.unit, stage.units):
                fields = stage.run_unit(unit, loop)
                progress.unit = unit + 1
                bar.advance(1, **fields)
                # decided together: every rank saves (a collective) or none does
                flags = ctx.parallel.gather([(
                    stage.time_budget_s is not None and clock.elapsed() >= stage.time_budget_s,
                    settings.save_every_s is not None and clock.elapsed() - loop.saved_at_s >= settings.save_every_s,
                    stop.is_set())])
                over_budget, save_by_clock, stopping = (any(f[i] for f in flags) for i in range(3))
                # a stage may end before its units when it has used its data (GRPO's dynamic sampling by epochs)
                used = getattr(stage, "data_used", None)
                last = progress.unit == stage.units or over_budget or (used is not None and used(progress))
                evaluate_if_due(ctx, loop, settings.eval_every)
                save_if_due(ctx, loop, last=last, every=settings.save_every, now=save_by_clock or stopping)
                if last:
                    break
                if stopping:
                    raise Stopped(f"stage '{ctx.stage.name}' saved a checkpoint after unit {progress.unit} of "
                                  f"{stage.units} on SIGTERM; continue with `veripo run --resume "
                                  f"{ctx.stage_dir.parent.parent}`")
    finally:
        for writer in writers.values():
            writer.close()
    return StageResult(steps=progress.step, outputs=outputs, numbers={**stage.numbers(progress), "wall_time_s": clock.elapsed()})


def evaluate_if_due(ctx: StageContext, loop: StageLoop, every: int | None) -> None:
    """Every ``every`` optimizer steps (checked after each unit): evaluate on the held-out set into
    ``<stage>/eval-steps/step-<n>/``, write an ``eval`` row to metrics.jsonl, and when the mean accuracy over the
    benchmarks beats the best so far, save the weights to ``<stage>/best/``. The best so far and the step of the
    last evaluation live in the checkpoint's counters, so a resumed stage evaluates exactly where the
    uninterrupted one did."""
    progress = loop.progress
    done = progress.extra.get("eval_step", 0)
    if not every or ctx.evaluate is None or progress.step // every == done // every:
        return
    metrics = ctx.evaluate(ctx.stage_dir / "eval-steps" / f"step-{progress.step:06d}")
    ctx.policy.model.train()
    accuracies = [m.get("accuracy") for m in metrics.values()]
    score = sum(a or 0.0 for a in accuracies) / len(accuracies) if accuracies else None
    score = ctx.parallel.broadcast(score)  # rank 0 judged: every rank takes the same decision
    loop.metrics_row("eval", score=score, accuracy={name: m.get("accuracy") for name, m in metrics.items()})
    best = progress.extra.get("best")
    if score is not None and (best is None or score > best["score"]):
        record = {"step": progress.step, "global_step": progress.global_step, "unit": progress.unit, "score": score,
                  "accuracy": {name: m.get("accuracy") for name, m in metrics.items()}}
        # a collective: every rank (the optimizer is gathered too: not every strategy can gather weights alone)
        model_state, _ = ctx.parallel.full_state(loop.optimizer)
        if ctx.dist.is_main:
            save_best(ctx.stage_dir, ctx.policy.model, ctx.policy.processor, record, model_state=model_state)
        progress.extra["best"] = {"step": progress.step, "score": score}
        ctx.log(f"step {progress.step}: held-out score {score:.4f}, the best so far: saved to best/")
    elif score is not None:
        ctx.log(f"step {progress.step}: held-out score {score:.4f} (best {best['score']:.4f} at step {best['step']})")
    progress.extra["eval_step"] = progress.step


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


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """An event set by SIGTERM (what a cluster scheduler sends before it kills a job) while the stage runs: the
    loop finishes its unit, saves a checkpoint and stops (``Stopped``). A second SIGTERM ends the process at
    once, as without the handler (a resume then redoes the unit). Outside the main thread: never set."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        event.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_if_due(ctx: StageContext, loop: StageLoop, *, last: bool, every: int, now: bool = False) -> None:
    """Checkpoint after every ``every`` units, at the end, and ``now`` (the clock's interval passed, or a
    stop was requested); outputs are flushed first and their sizes recorded."""
    progress = loop.progress
    if not (last or now or progress.unit % max(1, every) == 0):
        return
    loop.saved_at_s = loop.clock.elapsed()
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



