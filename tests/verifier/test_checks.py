"""Rule checks: repetition, reflection, and every check of one rollout (check_rollout)."""

from __future__ import annotations

import pytest

from veripo.config import VerifierConfig
from veripo.data.records import Rollout, Sample
from veripo.rewards.profiles import build_profile
from veripo.verifier.checks import (
    conclusion,
    conclusions_along,
    final_answer_key,
    is_reflective,
    is_repetitive,
    repeated_line_share,
    repetition_share,
)
from veripo.verifier.run import check_rollout, thinking_length

MC = Sample(id="q", problem="Which way did the ball move?", problem_type="multiple choice", answer="B",
            options=["A. up", "B. left", "C. right"])


def test_repetition_share_hand_computed():
    # 8 words "a b a b a b a b", 2-grams: ab ba ab ba ab ba ab = 7, 2 distinct -> 5/7 repeat an earlier one
    assert repetition_share("a b a b a b a b", n=2) == pytest.approx(5 / 7)
    assert repetition_share("one two three four five six seven eight nine ten", n=4) == 0.0
    assert repetition_share("too short", n=4) == 0.0


def test_repeated_lines_hand_computed():
    text = "Frame 1: red\nFrame 1: red\nFrame 1: red\nFrame 2: blue"
    assert repeated_line_share(text) == pytest.approx(0.5)  # 4 lines, 2 distinct
    assert repeated_line_share("a\nb") == 0.0


def test_is_repetitive_uses_threshold_and_ngram():
    loop = "The ball moves left. " * 12
    varied = "The ball starts centred. In frame two it is further left. By the end it sits at the left edge."
    assert is_repetitive(loop, n=4, threshold=0.5)
    assert not is_repetitive(varied, n=4, threshold=0.5)
    assert not is_repetitive(loop, n=4, threshold=0.99)  # 44/45 repeated 4-grams < 0.99 is not the threshold
    lines = "\n".join(["Frame 3: the ball is left"] * 3 + ["done"])
    assert is_repetitive(lines, n=50, threshold=0.4)  # caught by repeated lines, not n-grams


@pytest.mark.parametrize(("thinking", "reflective"), [
    ("The ball goes right, so the answer is C. Wait, let me re-check frame 3. It is left, so the answer is B.", True),
    ("So the answer is C. Actually, looking again, the ball went left. Therefore the answer is B.", True),
    ("So the answer is B. Wait, let me check again. Yes, the answer is B.", False),  # checks, does not change
    ("The answer is C. Then the answer is B.", False),  # changes without noticing a mistake
    ("The ball moves left across the frames. So the answer is B.", False),
    (None, False),
])
def test_reflective_detector(thinking, reflective):
    assert is_reflective(thinking, MC) is reflective


def test_conclusions_along_collapses_repeats():
    assert conclusions_along("So the answer is C. So the answer is C. Wait. So the answer is B.", MC) == ["C", "B"]


def rollout(text: str, **kw) -> Rollout:
    return Rollout(id=kw.pop("id", "q/0/0"), sample_id="q", group_index=0, text=text, **kw)


def test_check_rollout_good_and_bad():
    cfg, profile = VerifierConfig(), build_profile("veripo")
    good = check_rollout(rollout("<think>The ball moves left, so the answer is B.</think><answer>B</answer>"),
                         MC, profile, cfg)
    assert (good.format_ok, good.correct, good.repetitive, good.truncated) == (True, True, False, False)
    assert good.thinking_tokens == 9 and good.reasons == []
    cut = check_rollout(rollout("<think>The ball moves left, so the answer", truncated=True), MC, profile, cfg)
    assert cut.truncated and not cut.format_ok and not cut.correct
    assert "truncated" in cut.reasons and any(r.startswith("format") for r in cut.reasons)
    no_close = check_rollout(rollout("<think>left.</think><answer>B"), MC, profile, cfg)
    assert no_close.truncated  # no closing answer tag, even when the engine did not flag it
    loop = check_rollout(rollout("<think>" + "the ball moves left " * 20 + "</think><answer>C</answer>"),
                         MC, profile, cfg)
    assert loop.repetitive and not loop.correct and "accuracy 0.00" in loop.reasons


def test_thinking_length_sources():
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    r = rollout("x", thinking_tokens=7)
    assert thinking_length(r, "ab cd", Chars()) == (5, "tokenizer")
    assert thinking_length(r, "ab cd") == (7, "rollout")
    assert thinking_length(rollout("x"), "ab cd") == (2, "whitespace")


def test_min_thinking_tokens_fails_format():
    v = check_rollout(rollout("<think>B.</think><answer>B</answer>"), MC, build_profile("veripo"),
                      VerifierConfig(min_thinking_tokens=5))
    assert not v.format_ok and any("shorter than 5" in r for r in v.reasons)


NUM = Sample(id="n", problem="How many circles?", problem_type="numerical", answer="3")
FREE = Sample(id="f", problem="What is the man doing?", problem_type="free-form", answer="sitting")


@pytest.mark.parametrize(("sample", "thinking", "concluded"), [
    (MC, "The ball ends at the edge. So the answer is B.", "B"),  # a letter after a cue
    (MC, "Therefore option (C).", "C"),
    (MC, "Frame 4: the ball went left.", "B"),  # the one option whose text the sentence names
    (MC, "It went up or left.", None),  # two options named: no single conclusion
    (MC, "The answer is C. Hmm. Okay.", "C"),  # the last of the last three sentences that concludes something
    (MC, "So the answer is B. Frame 1 is dark. Frame 2 is dark. Frame 3 is dark.", None),  # too early to count
    (MC, "I cannot decide.", None),
    (NUM, "Two plus one is 3.", "3"),
    (NUM, "So 3.5 in total.", "3.5"),
    (NUM, "Therefore 3.0", "3"),  # numbers are normalised like final answers
    (NUM, "First 2, then 4. So the answer is 5.", "5"),  # the last number of the concluding sentence
    (NUM, "I see some.", None),
    (NUM, "Therefore 1e3.", "1000"),  # an exponent belongs to the number
    (NUM, "So there are 1,000 dots.", "1000"),
    (NUM, "So it moved -3 cells.", "-3"),
    (FREE, "He stays down. So the man is sitting.", "the man is sitting"),  # the words after the last cue
    (FREE, "Answer: Sitting!", "sitting"),
    (FREE, "He stays on the bench.", None),
    (FREE, None, None),
])
def test_conclusion_extraction(sample, thinking, concluded):
    assert conclusion(thinking, sample) == concluded


@pytest.mark.parametrize(("sample", "answer", "key"), [
    (MC, "B", "B"), (MC, "(C) right", "C"), (MC, "left", "B"), (MC, "E", None), (MC, None, None),
    (NUM, "3.0", "3"), (NUM, "about 12 apples", "12"), (NUM, "none", None),
    (FREE, "The Man  is Sitting!", "the man is sitting"), (FREE, "", None),
])
def test_final_answer_key(sample, answer, key):
    assert final_answer_key(answer, sample) == key


def test_repetition_on_a_real_loop_vs_a_normal_chain():
    normal = ("In frame 1 the red square is in the top left cell. In frame 2 it has moved one cell to the right. "
              "By frame 4 it sits in the top right cell, so it moved right. The answer is C.")
    loop = normal + " " + "Frame 3: the red square is in the top right cell.\n" * 15
    assert repetition_share(normal) < 0.1 and repeated_line_share(normal) == 0.0
    assert is_repetitive(loop) and not is_repetitive(normal)


def test_make_eval_judge_labels_raw_responses():
    from veripo.verifier.judges import make_eval_judge

    label = make_eval_judge("rule", VerifierConfig())
    responses = ["<think>It ends on the left. So the answer is B.</think><answer>B</answer>",
                 "<think>It ends on the left. So the answer is B.</think><answer>C</answer>",
                 "no tags at all"]
    assert label([MC] * 3, responses) == ["consistent", "inconsistent", "unknown"]


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a test extra
    given = None

if given is not None:
    hostile = st.text(st.characters(codec="utf-8"), max_size=400) | st.builds(
        lambda unit, k: unit * k, st.sampled_from(["So the answer is B. ", "wait\n", "{x} }{ ", "\u0000\ud7ff"]),
        st.integers(0, 300))

    @settings(max_examples=150, deadline=None)
    @given(thinking=hostile, answer=hostile, kind=st.sampled_from(["multiple choice", "numerical", "free-form"]))
    def test_checks_and_rule_judge_never_crash_on_hostile_text(thinking, answer, kind):
        from veripo.verifier.judges import JudgeItem, RuleJudge, parse_verdict

        sample = MC if kind == "multiple choice" else Sample(id="x", problem="?", problem_type=kind, answer="3")
        assert 0.0 <= repetition_share(thinking) <= 1.0 and 0.0 <= repeated_line_share(thinking) <= 1.0
        assert isinstance(is_reflective(thinking, sample), bool)
        [result] = RuleJudge().judge([JudgeItem(sample, thinking, answer)])
        assert result.label in ("consistent", "inconsistent", "unknown")
        assert parse_verdict(thinking) in (None, "consistent", "inconsistent")
