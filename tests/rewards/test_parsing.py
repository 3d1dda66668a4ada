"""parse_completion, extract_choice, extract_number on what models really write."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veripo.rewards import extract_choice, extract_number, parse_completion
from veripo.rewards.parsing import option_letters, strict_format_ok
from veripo.rewards.peers import first_answer_block

OPTIONS = ["A. red", "B. blue", "C. dark green", "D. black"]


def test_well_formed() -> None:
    p = parse_completion("<think> look </think>\n<answer> B </answer>")
    assert (p.thinking, p.answer, p.format_ok, p.strict_format_ok, p.truncated, p.problems) == (
        "look", "B", True, True, False, ()
    )


@pytest.mark.parametrize(
    "text, answer, format_ok, strict, truncated, problem",
    [
        ("< think >a</ think ><ANSWER>B</answer >", "B", True, False, False, None),
        ("<think>a</think><answer>B", "B", False, False, True, "unclosed <answer>"),
        ("<think>unfinished reasoning", None, False, False, True, "unclosed <think>"),
        ("<think>a</think><answer>B</answer><answer>C</answer>", "B", False, True, False, "several answer blocks"),
        ("<think>a</think><answer>D</answer> trailing", "D", True, False, False, None),
        ("<think>a</think>so<answer>D</answer>", "D", False, False, False, "text between </think> and <answer>"),
        ("B", None, False, False, False, "no <think> tag"),
        ("<answer>B</answer>", "B", False, False, False, "no <think> tag"),
        ("<think>a</think><answer></answer>", "", False, True, False, "empty answer"),
        ("<think></think><answer>A</answer>", "A", False, True, False, "empty thinking"),
        ("<think>a<answer>B</answer></think>", "B", False, False, False, "<answer> before </think>"),
        ("</think><think>a</think><answer>B</answer>", "B", False, False, False, "closing tag without opening tag"),
    ],
)
def test_tolerant_parsing(text: str, answer: str | None, format_ok: bool, strict: bool, truncated: bool,
                          problem: str | None) -> None:  # fmt: skip
    p = parse_completion(text)
    assert p.answer == answer
    assert p.format_ok is format_ok
    assert p.strict_format_ok is strict
    assert p.truncated is truncated
    if problem:
        assert problem in p.problems
    assert p.format_ok == (not p.problems)


@pytest.mark.parametrize(
    "answer, letter",
    [("B", "B"), ("b", "B"), ("(B)", "B"), ("$B$", "B"), ("\\boxed{B}", "B"), ("B. blue", "B"), ("B) blue", "B"),
     ("B.", "B"), ("The answer is C", "C"), ("dark green", "C"), ("Black", "D"), ("a red car", None),
     ("E", None), ("", None), (None, None), ("blue or red", None)],
)  # fmt: skip
def test_extract_choice(answer: str | None, letter: str | None) -> None:
    assert extract_choice(answer, OPTIONS) == letter


def test_option_letters() -> None:
    assert option_letters(OPTIONS) == "ABCD"
    assert option_letters(["(A) x", "(B) y"]) == "AB"
    assert option_letters([]) == "ABCDEFGHIJ"


@pytest.mark.parametrize(
    "text, value",
    [("42", 42.0), ("-2", -2.0), ("\u22123", -3.0), ("1,000", 1000.0), ("1,234,567.5", 1234567.5), ("1,5", 1.5),
     ("0.30", 0.3), (".5", 0.5), ("1e3", 1000.0), ("3/4", 0.75), ("\\frac{3}{4}", 0.75), ("$12$", 12.0),
     ("\\boxed{7}", 7.0), ("60 degrees", 60.0), ("about 3 chairs", 3.0), ("five", 5.0), ("abc", None), ("", None),
     ("1e999999", None), ("1/0", None)],
)  # fmt: skip
def test_extract_number(text: str, value: float | None) -> None:
    got = extract_number(text)
    assert got == (pytest.approx(value) if value is not None else None)


_PIECES = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "a", "B", "</", "<"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_strict_format_equals_videor1_regex(text: str) -> None:
    expected = re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL) is not None
    assert strict_format_ok(text) is expected


@settings(max_examples=150, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_first_answer_block_equals_videor1_regex(text: str) -> None:
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    assert first_answer_block(text) == (match.group(1).strip() if match else "")


@pytest.mark.parametrize(
    "text, answer",
    [("so the answer is \\boxed{\\frac{1}{2}} ok", "\\frac{1}{2}"), ("<think>x</think> \\boxed{B}", "B"),
     ("<think>\\boxed{B}</think><answer>C</answer>", "C"), ("\\boxed{1} then \\boxed{2", None)],
)  # fmt: skip
def test_boxed_fallback_without_answer_tag(text: str, answer: str | None) -> None:
    parsed = parse_completion(text)
    assert parsed.answer == answer
    assert not parsed.format_ok and not parsed.truncated or "<answer>" in text
