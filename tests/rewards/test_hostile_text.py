"""Untrusted model output at every reward: a finite float in range, in bounded time, no exception."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veripo.data.records import PROBLEM_TYPES, Sample
from veripo.rewards import (
    REWARDS,
    adaptive_length_rewards,
    extract_choice,
    extract_number,
    get_profile,
    parse_completion,
)

RANGES = {"format_lenient": (0.0, 0.5), "repetition": (-1.0, 0.0)}  # every other reward: [0, 1]
TIME_LIMIT_S = 12.0  # math-verify's own timeouts are 5 s for parsing and 5 s for comparing

HOSTILE = [
    "x" * 10_000_000,
    "<think>" + "wait " * 2_000_000 + "</think><answer>B</answer>",
    "<think>a</think><answer>" + "1 " * 5_000_000 + "</answer>",
    "<answer>" * 100_000,
    "{" * 100_000 + "}" * 99_999,
    "<think>a</think><answer>$" + "\\frac{" * 5000 + "1" + "}{2}" * 5000 + "$</answer>",
    "<think>a</think><answer>9**9**9</answer>",
    "<think>a</think><answer>$9^{9^{9}}$</answer>",
    "9**9**9 \\boxed{9^{9^{9^{9}}}}",
    "<think>a</think><answer>1e999999</answer>",
    "<think>a</think><answer>-1e999999</answer>",
    "<think>a</think><answer>$\\frac{1}{0}$</answer>",
    "<think>a</think><answer>$\\sqrt{ \\left( \\frac{ \\begin{matrix}</answer>",
    "<think>a</think><answer>1000000000000!</answer>",
    "<think>a</think><answer>__import__('os').system('echo pwned')</answer>",
    "<think>\x00\ud7ff\U0010ffff</think><answer>\u202e\u0000B</answer>",
    "<think>a</think><answer>nan</answer>",
    "<think>a</think><answer>inf</answer>",
]
GOLDS = {"multiple choice": "B", "numerical": "12", "regression": "0", "OCR": "STOP", "free-form": "a cat",
         "math": "\\frac{1}{2}"}  # fmt: skip


def _check(name: str, value: object) -> None:
    low, high = RANGES.get(name, (0.0, 1.0))
    assert isinstance(value, float), (name, type(value))
    assert low <= value <= high, (name, value)


@pytest.mark.parametrize("text_index", range(len(HOSTILE)))
def test_hostile_inputs_at_every_reward(text_index: int) -> None:
    text = HOSTILE[text_index]
    # Megabyte texts go through the types whose rewards read long answers (WER, ROUGE, math); the rest
    # through every type.
    kinds = ("OCR", "free-form", "math", "regression") if len(text) > 1_000_000 else PROBLEM_TYPES
    for kind in kinds:
        sample = Sample(id="h", problem="q", problem_type=kind, answer=GOLDS[kind], options=["A. x", "B. y"])
        for name, reward in REWARDS.items():
            start = time.monotonic()
            _check(name, reward(text, sample))
            assert time.monotonic() - start < TIME_LIMIT_S, (name, kind, text[:40])


_PIECES = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "< answer >", "\\boxed{", "\\frac{", "{", "}", "$", "^", "**",
     "9", "1e999", "-", ".", ",", "(", ")", "A", "b", " ", "\n", "\\left(", "\\sqrt", "!", "/", "0"]
)  # fmt: skip
TEXTS = st.one_of(st.text(max_size=200), st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=40).map("".join))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, gold=st.one_of(st.sampled_from(list(GOLDS.values())), st.text(max_size=20)),
       kind=st.sampled_from(PROBLEM_TYPES))  # fmt: skip
def test_arbitrary_text_at_every_reward(text: str, gold: str, kind: str) -> None:
    sample = Sample(id="h", problem="q", problem_type=kind, answer=gold, options=["A. x", "B. y"])
    for name, reward in REWARDS.items():
        _check(name, reward(text, sample))
    for profile in ("videor1-train", "videor1-eval", "veripo-eval", "veripo"):
        scores = get_profile(profile).score(text, sample)
        assert {"accuracy", "format", "total"} <= set(scores)


@settings(max_examples=100, deadline=None)
@given(TEXTS)
def test_parsers_never_raise(text: str) -> None:
    parsed = parse_completion(text)
    assert parsed.format_ok == (not parsed.problems)
    letter = extract_choice(text, ["A. x", "B. y"])
    assert letter is None or letter in "AB"
    number = extract_number(text)
    assert number is None or math.isfinite(number)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(TEXTS, st.sampled_from(["q1", "q2"]), st.floats(allow_nan=True, allow_infinity=True)),
        max_size=12,
    )
)
def test_adaptive_length_rewards_on_arbitrary_groups(rows: list[tuple[str, str, float]]) -> None:
    samples = [Sample(id=sid, problem="q", problem_type="OCR", answer="x") for _, sid, _ in rows]
    rewards = adaptive_length_rewards([t for t, _, _ in rows], samples, [a for _, _, a in rows], scale=0.2)
    assert len(rewards) == len(rows)
    assert all(isinstance(r, float) and -0.2 <= r <= 0.2 for r in rewards)
