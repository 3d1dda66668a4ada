"""Which questions a GRPO rollout batch samples: the stage's seeded question stream, and DAPO's dynamic sampling.

The stream is the stage's questions in a fresh seeded permutation per epoch, one after another; a rollout batch
takes the next ``rollout_batch_size`` of them. The stage's checkpoint records how many it has drawn
(``questions_drawn``), so a resumed stage continues the stream where the uninterrupted one would.

Dynamic sampling (DAPO, Yu et al. 2025, section 3.2; verl's ``recipe/dapo/dapo_ray_trainer.py``): groups whose
rewards are all equal have zero advantage and teach nothing, so they are dropped and the phase samples another
``rollout_batch_size`` questions, until the kept groups fill the batch or ``max_resample_rounds`` extra rounds
are spent; the batch is then the first ``rollout_batch_size`` kept groups in the order drawn (verl aligns the
batch the same way). Where verl raises after its last round, a batch that is still short trains on what it has
and the shortfall is logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch

from veripo.data.records import Sample
from veripo.recipes.common import generator


class Group(Protocol):
    kept: bool


G = TypeVar("G", bound=Group)


def draw_questions(samples: list[Sample], start: int, count: int, seed: int, stage: str) -> list[Sample]:
    """Questions ``start .. start + count`` of the stage's stream: epochs of seeded permutations of ``samples``."""
    n = len(samples)
    out: list[Sample] = []
    while len(out) < count:
        epoch, offset = divmod(start + len(out), n)
        order = torch.randperm(n, generator=generator(seed, stage, "order", epoch)).tolist()
        take = min(count - len(out), n - offset)
        out.extend(samples[i] for i in order[offset : offset + take])
    return out


@dataclass
class FilledBatch(Generic[G]):
    """The groups of every round in the order drawn (``kept`` says which train) and the counts to log."""

    size: int  # the batch's questions (grpo.rollout_batch_size)
    groups: list[G] = field(default_factory=list)
    drawn: int = 0  # questions drawn from the stream, every round
    rounds: int = 0  # rounds after the first
    dropped: int = 0  # groups left out for zero reward variance (or outside the accuracy band)
    surplus: int = 0  # kept groups beyond the batch (the last round overshot), left out as verl does

    @property
    def kept(self) -> int:
        return sum(g.kept for g in self.groups)

    @property
    def shortfall(self) -> int:
        """Groups the batch lacks after the last round (0 when full)."""
        return max(0, self.size - self.kept)


def fill_batch(sample_round: Callable[[int, int], list[G]], size: int, *, dynamic: bool,
               max_rounds: int) -> FilledBatch[G]:
    """Sample rounds of ``size`` questions until ``size`` groups are kept (``dynamic``) or after one round.

    Args:
        sample_round: ``(round, first)`` -> the scored groups of stream questions ``first .. first + size``
            of this batch, ``kept`` already decided (``assign_advantages``).
        size: ``grpo.rollout_batch_size``.
        dynamic: DAPO's dynamic sampling; without it the first round is the batch (dropped groups shrink it).
        max_rounds: extra rounds at most (``grpo.max_resample_rounds``).
    """
    batch: FilledBatch[G] = FilledBatch(size)
    while True:
        groups = sample_round(batch.rounds, batch.drawn)
        batch.groups.extend(groups)
        batch.drawn += size
        batch.dropped += sum(not g.kept for g in groups)
        if not dynamic or batch.kept >= size or batch.rounds >= max_rounds:
            break
        batch.rounds += 1
    kept = 0
    for g in batch.groups:
        if g.kept:
            kept += 1
            if kept > size:
                g.kept = False
                batch.surplus += 1
    return batch
