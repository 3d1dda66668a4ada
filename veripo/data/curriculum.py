"""Curriculum helpers: a stage's question list drawn from several sources by weight, and VerIPO's
easy-sample discard between iterations.

VerIPO (Li et al. 2025, Sec. 3 "Training Recipe"): after each iteration, questions whose rollouts were all
correct are removed from the pool with probability 0.8, so later iterations focus on what is still hard.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from veripo.data.loaders import LoadResult, load_samples
from veripo.data.records import Sample, Verdict

log = logging.getLogger(__name__)


class SourceSpec(Protocol):
    """What :func:`load_sources` needs of a source (``veripo.config.schema.DataSource`` fits)."""

    path: str
    name: str | None
    media_root: str | None
    format: str
    on_error: str
    weight: float
    limit: int | None


def load_sources(sources: Sequence[SourceSpec], *, require_media: bool = True) -> dict[str, tuple[LoadResult, float]]:
    """Load every source: ``{name: (LoadResult, weight)}``; names default to the file or folder name."""
    loaded: dict[str, tuple[LoadResult, float]] = {}
    for spec in sources:
        name = spec.name or os.path.splitext(os.path.basename(os.path.normpath(spec.path)))[0]
        if name in loaded:
            raise ValueError(f"two data sources are named {name!r}; give them distinct `name`s")
        result = load_samples(spec.path, media_root=spec.media_root, format=spec.format,
                              on_error=spec.on_error, limit=spec.limit, require_media=require_media,  # type: ignore[arg-type]
                              source=name)
        loaded[name] = (result, float(spec.weight))
    return loaded


def allocate(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """Split ``n`` draws across sources in proportion to ``weights`` (largest remainder, ties by name).

    >>> allocate({"a": 1, "b": 1, "c": 2}, 10)
    {'a': 3, 'b': 2, 'c': 5}
    """
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"source weights must be >= 0, got {dict(weights)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"source weights must not all be 0, got {dict(weights)}")
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    rest = n - sum(counts.values())
    order = sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:rest]:
        counts[k] += 1
    return counts


def mix_sources(sources: Mapping[str, Sequence[Sample] | LoadResult | tuple[LoadResult, float]],
                weights: Mapping[str, float] | None = None, n: int | None = None, *, seed: int = 0) -> list[Sample]:
    """A stage's question list: ``n`` samples drawn from the sources by weight, shuffled, seeded.

    Within a source, samples are drawn without replacement; when a source must give more than it has, it is
    repeated in fresh shuffles (each sample once per pass). ``weights`` default to the weights that come with
    ``(LoadResult, weight)`` entries, else 1; ``n`` defaults to the total number of samples.
    """
    pools: dict[str, list[Sample]] = {}
    given_weights: dict[str, float] = {}
    for name, src in sources.items():
        if isinstance(src, tuple):
            src, given_weights[name] = src
        pools[name] = list(src.samples if isinstance(src, LoadResult) else src)
    weights = dict(weights) if weights is not None else {k: given_weights.get(k, 1.0) for k in pools}
    unknown = set(weights) - set(pools)
    if unknown:
        raise ValueError(f"weights name unknown sources {sorted(unknown)}; sources are {sorted(pools)}")
    empty = [k for k in pools if not pools[k] and weights.get(k, 0) > 0]
    if empty:
        raise ValueError(f"sources {empty} have no samples but a positive weight")
    n = sum(len(p) for p in pools.values()) if n is None else n
    rng = np.random.default_rng(seed)
    picked: list[Sample] = []
    for name, count in allocate({k: weights.get(k, 0.0) for k in sorted(pools)}, n).items():
        pool = pools[name]
        while count > 0:
            take = min(count, len(pool))
            picked += [pool[i] for i in rng.permutation(len(pool))[:take]]
            count -= take
    return [picked[i] for i in rng.permutation(len(picked))]


# ------------------------------------------------------------------------------------ easy-sample discard


@dataclass(frozen=True)
class QuestionStats:
    """How a question's rollouts did: ``correct`` of ``total`` were right."""

    correct: int
    total: int

    @property
    def all_correct(self) -> bool:
        return self.total > 0 and self.correct == self.total


def question_stats_from_verdicts(verdicts: Iterable[Verdict | Mapping[str, Any]]) -> dict[str, QuestionStats]:
    """Per sample id: how many of its judged rollouts were correct."""
    counts: dict[str, list[int]] = {}
    for v in verdicts:
        sample_id, correct = (v.sample_id, v.correct) if isinstance(v, Verdict) else (v["sample_id"], v["correct"])
        c = counts.setdefault(sample_id, [0, 0])
        c[0] += int(bool(correct))
        c[1] += 1
    return {k: QuestionStats(*c) for k, c in counts.items()}


def _uniform(seed: int, sample_id: str) -> float:
    # A draw in [0, 1) that depends only on (seed, id): the same decision whatever the order of samples.
    digest = hashlib.sha256(f"{seed}|{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def discard_easy(samples: Sequence[Sample], question_stats: Mapping[str, QuestionStats | tuple[int, int]],
                 prob: float = 0.8, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Drop questions whose rollouts were all correct, each with probability ``prob`` (VerIPO: 0.8).

    Questions without stats (never rolled out) are kept. Returns (kept, discarded), both in input order;
    the counts are logged.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"discard probability must be in [0, 1], got {prob}")
    kept: list[Sample] = []
    discarded: list[Sample] = []
    easy = 0
    for sample in samples:
        stats = question_stats.get(sample.id)
        if isinstance(stats, tuple):
            stats = QuestionStats(*stats)
        if stats is not None and stats.all_correct:
            easy += 1
            if _uniform(seed, sample.id) < prob:
                discarded.append(sample)
                continue
        kept.append(sample)
    log.info("easy-sample discard: %d of %d questions had all rollouts correct; discarded %d (p=%.2f), kept %d",
             easy, len(samples), len(discarded), prob, len(kept))
    return kept, discarded
