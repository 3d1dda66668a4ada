"""Curriculum: weighted mixtures of sources and the easy-sample discard (VerIPO: p = 0.8)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from veripo.data.curriculum import (
    QuestionStats,
    allocate,
    discard_easy,
    load_sources,
    mix_sources,
    question_stats_from_verdicts,
)
from veripo.data.records import Sample, Verdict
from veripo.data.synthetic import make_synthetic


def _samples(prefix: str, n: int) -> list[Sample]:
    return [Sample(id=f"{prefix}{i}", problem="q", problem_type="numerical", answer="1") for i in range(n)]


def test_allocate_is_proportional_and_exact() -> None:
    assert allocate({"a": 3, "b": 1}, 8) == {"a": 6, "b": 2}
    assert sum(allocate({"a": 1, "b": 1, "c": 1}, 10).values()) == 10
    assert allocate({"a": 0, "b": 1}, 5) == {"a": 0, "b": 5}
    with pytest.raises(ValueError, match="must not all be 0"):
        allocate({"a": 0}, 3)


def test_mix_sources_weights_repeats_and_seed() -> None:
    sources = {"video": _samples("v", 50), "text": _samples("t", 5)}
    mixed = mix_sources(sources, {"video": 1, "text": 1}, 40, seed=1)
    by_source = Counter(s.id[0] for s in mixed)
    assert by_source == {"v": 20, "t": 20}
    assert Counter(s.id for s in mixed if s.id[0] == "t") == {f"t{i}": 4 for i in range(5)}  # 4 full passes
    assert len({s.id for s in mixed if s.id[0] == "v"}) == 20  # no repeats while the pool lasts
    assert [s.id for s in mix_sources(sources, {"video": 1, "text": 1}, 40, seed=1)] == [s.id for s in mixed]
    assert [s.id for s in mix_sources(sources, {"video": 1, "text": 1}, 40, seed=2)] != [s.id for s in mixed]
    assert len(mix_sources(sources)) == 55  # default: every sample once, weights 1
    with pytest.raises(ValueError, match="unknown sources"):
        mix_sources(sources, {"audio": 1}, 4)


@dataclass(frozen=True)
class _Source:
    path: str
    name: str | None = None
    media_root: str | None = None
    format: str = "auto"
    on_error: str = "skip"
    weight: float = 1.0
    limit: int | None = None


def test_load_sources_from_specs(tmp_path: Path) -> None:
    folder = make_synthetic(tmp_path / "syn", n=6, seed=0, kinds=("text",))
    loaded = load_sources([_Source(str(folder), weight=3.0), _Source(str(folder), name="few", limit=2)])
    assert {k: (len(r.samples), w) for k, (r, w) in loaded.items()} == {"syn": (6, 3.0), "few": (2, 1.0)}
    assert all(s.id.startswith("few:") for s in loaded["few"][0].samples)
    assert Counter(s.source for s in mix_sources(loaded, n=8, seed=0)) == {"syn": 6, "few": 2}
    with pytest.raises(ValueError, match="two data sources are named"):
        load_sources([_Source(str(folder)), _Source(str(folder))])


def test_discard_easy_statistics_and_rules() -> None:
    samples = _samples("q", 2000)
    stats = {s.id: QuestionStats(8, 8) for s in samples[:1000]}  # easy: all 8 rollouts right
    stats |= {s.id: (7, 8) for s in samples[1000:1500]}  # one wrong: never discarded
    kept, discarded = discard_easy(samples, stats, prob=0.8, seed=0)  # the last 500 have no stats: kept
    assert len(kept) + len(discarded) == 2000
    assert all(int(s.id[1:]) < 1000 for s in discarded)
    # Binomial(1000, 0.8): mean 800, sd 12.6; 5 sd either side.
    assert 737 <= len(discarded) <= 863
    again, _ = discard_easy(list(reversed(samples)), stats, prob=0.8, seed=0)
    assert {s.id for s in again} == {s.id for s in kept}  # the decision does not depend on order
    assert {s.id for s in discard_easy(samples, stats, prob=0.8, seed=1)[0]} != {s.id for s in kept}
    assert discard_easy(samples, stats, prob=0.0)[1] == [] and len(discard_easy(samples, stats, prob=1.0)[1]) == 1000
    assert discard_easy(samples, {s.id: (0, 0) for s in samples})[1] == []  # no rollouts: not "all correct"


def test_question_stats_from_verdicts() -> None:
    def v(sample: str, correct: bool) -> Verdict:
        return Verdict(rollout_id="r", sample_id=sample, format_ok=True, accuracy=float(correct), correct=correct,
                       thinking_tokens=1, repetitive=False, truncated=False)

    stats = question_stats_from_verdicts([v("a", True), v("a", True), v("b", True), v("b", False),
                                          {"sample_id": "c", "correct": True}])
    assert stats == {"a": QuestionStats(2, 2), "b": QuestionStats(1, 2), "c": QuestionStats(1, 1)}
    assert stats["a"].all_correct and not stats["b"].all_correct
