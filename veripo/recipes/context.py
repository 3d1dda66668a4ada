"""What a recipe is handed: the run config, its stage, the policy, the questions, and where to write."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console

from veripo.config import RunConfig, Stage
from veripo.data.records import Sample
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
from veripo.recipes.common import (
    Stopwatch,
    build_optimizer,
    generator,
    grad_norm_and_clip,
    is_sharded,
)
from veripo.recipes.deepspeed_zero3 import DeepSpeedAdamW, deepspeed_of
from veripo.recipes.distributed import DistInfo, sum_gradients
from veripo.recipes.sharding import (
    LayerShardedAdamW,
    full_model_state,
    full_optimizer_state,
    is_weight_sharded,
    sharded_grad_norm_and_clip,
)


@dataclass
class StageContext:
    cfg: RunConfig
    stage: Stage
    index: int  # position of the stage in the run
    stage_dir: Path
    policy: Any  # veripo.models.Policy: model, processor, tokenizer
    samples: list[Sample]
    encode: Callable[[Sample], dict[str, Any]]  # a sample -> its prompt's model inputs (batch of one)
    global_step: int = 0  # optimizer steps taken by earlier stages
    dist: DistInfo = field(default_factory=DistInfo)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    inputs: dict[str, Path] = field(default_factory=dict)  # files from earlier stages (rollouts, pairs)

    def section(self, name: str) -> Any:
        """The run's config section ``name`` with this stage's overrides."""
        return self.cfg.section_for(self.stage, name)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self.console.print(f"[dim]\\[{self.stage.name}][/dim] {message}")

    def optimizer(self, lr: float, weight_decay: float = 0.0, max_grad_norm: float = 0.0) -> torch.optim.Optimizer:
        """The stage's AdamW, sharded over the ranks with ``distributed.shard_optimizer`` (ZeRO-1); under
        DeepSpeed ZeRO-3 a new engine's, which clips to ``max_grad_norm`` itself."""
        zero3 = deepspeed_of(self.policy.model)
        if zero3 is not None:
            self.log(f"DeepSpeed ZeRO-3 engine: weights, gradients and AdamW state partitioned over {self.dist.world} "
                     "ranks")
            return zero3.new_optimizer(lr, weight_decay, max_grad_norm)
        optimizer = build_optimizer(self.policy.model, lr, weight_decay, shard=self.cfg.distributed.shard_optimizer)
        if is_sharded(optimizer):
            self.log(f"AdamW state sharded over {self.dist.world} ranks (ZeRO-1)")
        elif isinstance(optimizer, LayerShardedAdamW):
            self.log(f"AdamW state of the whole parameters sharded over {self.dist.world} ranks (ZeRO-1); "
                     "the decoder layers' state is sharded with their weights")
        return optimizer


@dataclass
class StageResult:
    """What a stage hands on: its optimizer steps, output files and numbers for the summary."""

    steps: int = 0
    outputs: dict[str, Path] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)


def resume_stage(ctx: StageContext, optimizer: Any, scheduler: Any, outputs: list[str]) -> Progress:
    """Restore the newest checkpoint of this stage (weights, optimizer, counters) and cut the ``outputs``
    files back to it; without a checkpoint the stage starts over and its outputs are emptied."""
    ckpt = latest_checkpoint(ctx.stage_dir)
    if ckpt is None:
        if ctx.dist.is_main:
            truncate_outputs(ctx.stage_dir, {name: 0 for name in outputs})
        return Progress(global_step=ctx.global_step)
    load_model_weights(ctx.policy.model, ckpt)
    load_training_state(ckpt, optimizer, scheduler, ctx.policy.model)
    progress = load_progress(ckpt)
    if ctx.dist.is_main:
        truncate_outputs(ctx.stage_dir, progress.outputs)
    ctx.log(f"resumed from {ckpt.name} (unit {progress.unit}, step {progress.step})")
    return progress


def epoch_batch(items: list[Any], unit: int, batch_size: int, seed: int, stage: str) -> tuple[int, list[Any]]:
    """Batch ``unit`` of a stage that walks ``items`` in a fresh seeded permutation every epoch."""
    per_epoch = -(-len(items) // batch_size)
    epoch, b = divmod(unit, per_epoch)
    order = torch.randperm(len(items), generator=generator(seed, stage, "order", epoch)).tolist()
    return epoch, [items[i] for i in order[b * batch_size : (b + 1) * batch_size]]


def optimizer_step(ctx: StageContext, optimizer: Any, scheduler: Any, max_grad_norm: float, progress: Progress) -> tuple[float, float]:
    """Sum gradients over ranks, clip, step optimizer and schedule, count the step; (grad norm, lr used)."""
    model = ctx.policy.model
    if isinstance(optimizer, DeepSpeedAdamW):  # the engine reduced, and clips as it steps
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        progress.step += 1
        progress.global_step += 1
        return optimizer.grad_norm, lr
    sum_gradients(ctx.dist, model)
    if is_weight_sharded(model):
        grad_norm = sharded_grad_norm_and_clip(model, max_grad_norm)
    else:
        grad_norm = grad_norm_and_clip(model, max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    progress.step += 1
    progress.global_step += 1
    return grad_norm, lr


def save_if_due(ctx: StageContext, progress: Progress, *, last: bool, every: int, writers: list[Any], optimizer: Any,
                scheduler: Any, outputs: list[str], clock: Stopwatch) -> None:
    """Checkpoint after every ``every`` units and at the end (outputs flushed first, their sizes recorded)."""
    if not (last or progress.unit % max(1, every) == 0):
        return
    for writer in writers:
        writer.sync()
    progress.done = last
    progress.extra["time_s"] = clock.elapsed()
    if is_sharded(optimizer):  # ZeRO-1: every rank sends its share of the state to rank 0
        optimizer.consolidate_state_dict(to=0)
    model_state = optimizer_state = None
    if isinstance(optimizer, DeepSpeedAdamW):  # ZeRO-3: whole tensors gathered on rank 0, in the plain formats
        model_state = optimizer.zero3.full_model_state()
        optimizer_state = optimizer.full_state()
    elif is_weight_sharded(ctx.policy.model):  # FSDP2: whole tensors gathered on rank 0, saved in the plain formats
        model_state = full_model_state(ctx.policy.model)
        optimizer_state = full_optimizer_state(ctx.policy.model, optimizer)
    if ctx.dist.is_main:
        progress.outputs = output_sizes(ctx.stage_dir, outputs)
        save_checkpoint(ctx.stage_dir, ctx.policy.model, ctx.policy.processor, optimizer, scheduler, progress,
                        model_state=model_state, optimizer_state=optimizer_state)
