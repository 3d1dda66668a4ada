"""How long a training stage runs, from its data: ``epochs`` (passes over its questions or pairs, may be
fractional) or ``max_steps`` (optimizer steps), whichever the config gives (both: the shorter; neither: one
epoch). The recipes size their stages here and ``veripo plan`` prints the same numbers before a run.

Units are what a stage checkpoints after: a rollout batch of ``grpo.rollout_batch_size`` questions for GRPO
(``rollout_batch_size x num_generations / global_batch_size`` optimizer steps each; the questions run on
across epoch boundaries, ``veripo.recipes.grpo.batch_questions``), a batch for SFT and DPO (one optimizer
step; every epoch ends with a short batch, ``veripo.recipes.stage_loop.epoch_batch``). A ``max_steps`` that
is not a whole number of GRPO rollout batches is rounded up to one.

A stage that would see under ``SMALL_SHARE`` of its data gets a warning naming it: the 7B config once ran
each GRPO stage for a single rollout batch, 64 of its ~70k questions, and nothing said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SMALL_SHARE = 0.05  # a stage that uses less than this share of its data is warned about


@dataclass(frozen=True)
class StageSize:
    """A training stage's length. ``items``: the questions (GRPO, SFT) or pairs (DPO) it draws from;
    ``per_unit``: of them per unit; ``steps``: optimizer steps (for GRPO an upper bound: the group filters
    may drop responses); ``basis``: which config key decided it."""

    items: int
    per_unit: int
    units: int
    steps: int
    basis: str
    drawn: int  # items the stage draws, repeats across epochs included

    @property
    def passes(self) -> float:
        """Passes over the data (``drawn / items``)."""
        return self.drawn / self.items if self.items else 0.0

    def warning(self, stage: str, what: str = "questions") -> str | None:
        """A warning when the stage uses under ``SMALL_SHARE`` of its data, else None."""
        if not self.items or self.drawn >= SMALL_SHARE * self.items:
            return None
        return (f"warning: stage '{stage}' uses {self.drawn} of its {self.items} {what} "
                f"({100 * self.drawn / self.items:.2f}%, {self.basis}); set epochs (passes over the data) or a "
                f"larger max_steps to train on more of it")


def _basis(epochs: float | None, max_steps: int | None) -> tuple[float | None, str]:
    if epochs is None and max_steps is None:
        return 1.0, "epochs 1 (default)"
    return epochs, " and ".join(s for s in (f"epochs {epochs:g}" if epochs is not None else "",
                                           f"max_steps {max_steps}" if max_steps is not None else "") if s)


def grpo_size(grpo: Any, num_generations: int, questions: int) -> StageSize:
    """Rollout batches and optimizer steps of a GRPO stage over ``questions`` questions (``grpo``: its
    ``GRPOConfig`` section; ``grpo.rollout_batches`` is the deprecated fixed count)."""
    per_batch = grpo.rollout_batch_size
    steps_per_unit = per_batch * num_generations // grpo.global_batch_size
    if grpo.rollout_batches is not None:
        units, basis = grpo.rollout_batches, f"rollout_batches {grpo.rollout_batches} (deprecated)"
    else:
        epochs, basis = _basis(grpo.epochs, grpo.max_steps)
        counts = []
        if epochs is not None:
            counts.append(math.ceil(epochs * questions / per_batch - 1e-9))
        if grpo.max_steps is not None:
            counts.append(math.ceil(grpo.max_steps / steps_per_unit))
        units = min(counts)
    return StageSize(items=questions, per_unit=per_batch, units=units, steps=units * steps_per_unit, basis=basis,
                     drawn=units * per_batch)


def batch_size_of(items: int, batch_size: int, epochs: float | None, max_steps: int | None) -> StageSize:
    """Batches (= optimizer steps) of an SFT or DPO stage over ``items`` samples or pairs: ``epochs`` passes
    of ``ceil(items / batch_size)`` batches each, at most ``max_steps``."""
    epochs, basis = _basis(epochs, max_steps)
    per_epoch = math.ceil(items / batch_size)
    counts = []
    if epochs is not None:
        counts.append(math.ceil(epochs * per_epoch - 1e-9))
    if max_steps is not None:
        counts.append(max_steps)
    units = min(counts)
    full, rest = divmod(units, per_epoch) if per_epoch else (0, 0)
    return StageSize(items=items, per_unit=batch_size, units=units, steps=units, basis=basis,
                     drawn=full * items + min(rest * batch_size, items))
