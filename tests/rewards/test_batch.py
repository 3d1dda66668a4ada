"""score_batch: same scores as scoring inline, hung and crashing items killed, counted and scored 0."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from veripo.data.records import Sample
from veripo.rewards import (
    REWARDS,
    ScoringPool,
    ScoringProfile,
    get_profile,
    register_reward,
    score_batch,
)


def _sleepy(completion: str, sample: Sample) -> float:
    if "HANG" in completion:
        time.sleep(60)
    return 1.0


def _dies(completion: str, sample: Sample) -> float:
    if "DIE" in completion:
        os._exit(3)
    return 1.0


@pytest.fixture()
def misbehaving_rewards() -> Iterator[None]:
    """Register a hanging and a crashing reward for this test only (forked workers inherit them)."""
    register_reward("test_sleeps_on_hang")(_sleepy)
    register_reward("test_dies_on_die")(_dies)
    yield
    del REWARDS["test_sleeps_on_hang"], REWARDS["test_dies_on_die"]


def _items() -> tuple[list[str], list[Sample]]:
    completions, samples = [], []
    for i, (kind, gold, pred) in enumerate(
        [("multiple choice", "B", "(B)"), ("numerical", "12", "12.0"), ("math", "\\frac{1}{2}", "0.5"),
         ("OCR", "STOP HERE", "stop"), ("free-form", "a cat sat", "the cat sat"), ("regression", "8", "10")] * 5
    ):  # fmt: skip
        completions.append(f"<think>t</think><answer>{pred}</answer>")
        samples.append(Sample(id=str(i), problem="q", problem_type=kind, answer=gold, options=["A. x", "B. y"]))
    return completions, samples


def test_workers_match_inline() -> None:
    completions, samples = _items()
    # spawn (the default start method) once; fork for the second profile to keep the test quick
    for name, context in (("veripo-eval", "spawn"), ("veripo", "fork")):
        profile = get_profile(name)
        inline = [profile.score(c, s) for c, s in zip(completions, samples)]
        batch = score_batch(completions, samples, name, workers=2, chunk_size=4, mp_context=context)
        assert list(batch) == inline
        assert batch.failures == {}
    assert list(score_batch(completions, samples, "veripo", workers=0)) == [
        get_profile("veripo").score(c, s) for c, s in zip(completions, samples)
    ]


def test_hung_item_is_killed_and_counted(misbehaving_rewards: None) -> None:
    profile = ScoringProfile("sleepy", accuracy="test_sleeps_on_hang", format="format_lenient")
    completions = ["<think>a</think><answer>B</answer>"] * 6
    completions[2] = "HANG"
    samples = [Sample(id=str(i), problem="q", problem_type="multiple choice", answer="B") for i in range(6)]
    start = time.monotonic()
    scores = score_batch(completions, samples, profile, workers=1, timeout_s=1.0, chunk_size=6, mp_context="fork")
    assert time.monotonic() - start < 30
    assert scores.failures == {"timeout": 1}
    assert scores[2] == {"accuracy": 0.0, "format": 0.0, "total": 0.0}
    assert [s["accuracy"] for i, s in enumerate(scores) if i != 2] == [1.0] * 5  # the rest of the chunk rescored


def test_dead_worker_is_replaced_and_counted(misbehaving_rewards: None) -> None:
    profile = ScoringProfile("dies", accuracy="test_dies_on_die", format="format_lenient")
    completions = ["ok", "DIE", "ok", "ok"]
    samples = [Sample(id=str(i), problem="q", problem_type="multiple choice", answer="B") for i in range(4)]
    scores = score_batch(completions, samples, profile, workers=1, chunk_size=4, mp_context="fork")
    assert scores.failures == {"worker died": 1}
    assert [s["accuracy"] for s in scores] == [1.0, 0.0, 1.0, 1.0]


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 samples"):
        score_batch(["a", "b"], [Sample(id="1", problem="", problem_type="OCR", answer="a")], "veripo")


def _exit_at_start(conn: object) -> None:
    os._exit(1)


def test_workers_that_cannot_start_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    from veripo.rewards import batch

    monkeypatch.setattr(batch, "_worker_main", _exit_at_start)
    completions, samples = _items()
    with pytest.raises(RuntimeError, match="died 3 times before starting"):
        score_batch(completions, samples, "veripo", workers=1, mp_context="fork")


def test_pool_is_reused_across_batches_and_profiles(misbehaving_rewards: None) -> None:
    completions, samples = _items()
    sleepy = ScoringProfile("sleepy", accuracy="test_sleeps_on_hang", format="format_lenient")
    with ScoringPool(2, chunk_size=4, timeout_s=1.0, mp_context="fork") as pool:
        first = score_batch(completions, samples, "veripo", pool=pool)
        hung = pool.score(["HANG", "ok"], samples[:2], sleepy)
        again = pool.score(completions, samples, "veripo")
    assert list(first) == list(again) == [get_profile("veripo").score(c, s) for c, s in zip(completions, samples)]
    assert hung.failures == {"timeout": 1} and hung[1]["accuracy"] == 1.0
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(completions, samples, "veripo")
