"""Reward gating and weights from the config: Video-R1's gated length bonus against a transcription of its
trainer's rule, format as a gate or an additive term, one correctness threshold for GRPO and the verifier."""

from __future__ import annotations

import random

import pytest

from veripo.config.schema import LengthRewardConfig, RewardConfig, VerifierConfig
from veripo.data.records import Rollout, Sample
from veripo.rewards.group import LengthBand, length_band_bonus
from veripo.rewards.profiles import profile_for
from veripo.verifier.run import check_rollout

MC = Sample(id="q", problem="Which?", problem_type="multiple choice", answer="B", options=["A. x", "B. y"])


def videor1_len_control(accuracies: list[float], lengths: list[int]) -> list[float]:
    """Video-R1's ``len_control`` (src/r1-v/src/open_r1/trainer/grpo_trainer.py), transcribed: the bonus each
    response of one group gets on top of its summed rewards."""
    bonus = [0.0] * len(accuracies)
    selected_indices = [i for i, a in enumerate(accuracies) if a > 0.1]
    if len(selected_indices) > 1:
        for idx in selected_indices:
            if 320 <= lengths[idx] <= 512:
                bonus[idx] += 0.2
    return bonus


def test_length_band_bonus_is_videor1s_rule_on_random_groups():
    rng = random.Random(0)
    band = LengthBand(bonus=0.2, min_tokens=320, max_tokens=512, count="response", min_correct=2)
    paid = 0
    for _ in range(500):
        accuracies = [rng.choice([0.0, 0.05, 0.1, 0.100001, 0.5, 1.0]) for _ in range(8)]
        lengths = [rng.choice([0, 319, 320, 400, 512, 513, 900]) for _ in range(8)]
        ours = length_band_bonus(accuracies, lengths, band, correct_threshold=0.1 + 1e-9)  # Video-R1 tests a > 0.1
        assert ours == videor1_len_control(accuracies, lengths), (accuracies, lengths)
        paid += sum(b > 0 for b in ours)
    assert paid > 100  # the cases exercise the bonus


def test_length_band_bonus_by_hand():
    band = LengthBand(bonus=0.3, min_tokens=10, max_tokens=20, min_correct=2)
    # a wrong response inside the band gains nothing; a correct one outside it neither
    assert length_band_bonus([1.0, 1.0, 0.0, 1.0], [15, 25, 15, 10], band, 1.0) == [0.3, 0.0, 0.0, 0.3]
    # one correct response is not enough (min_correct 2)
    assert length_band_bonus([1.0, 0.0], [15, 15], band, 1.0) == [0.0, 0.0]
    assert length_band_bonus([1.0, 0.0], [15, 15], LengthBand(0.3, 10, 20, min_correct=1), 1.0) == [0.3, 0.0]
    with pytest.raises(ValueError, match="2 accuracies but 1 lengths"):
        length_band_bonus([1.0, 0.0], [3], band, 1.0)


def _rewards(**changes) -> RewardConfig:
    return RewardConfig(**changes)


def test_profile_score_group_adds_the_bonus_to_correct_responses_only():
    profile = profile_for(_rewards(length=LengthRewardConfig(bonus=0.2, min_tokens=2, max_tokens=5)))
    right, wrong = "<think>it is y</think><answer>B</answer>", "<think>it is x</think><answer>A</answer>"
    scores = profile.score_group([right, right, wrong], MC, response_tokens=[9, 9, 9], thinking_tokens=[3, 7, 3])
    assert [s["length_bonus"] for s in scores] == [0.2, 0.0, 0.0]
    assert [s["total"] for s in scores] == pytest.approx([1.5 + 0.2, 1.5, 0.5])  # veripo: accuracy + 0.5 format
    counted_by_response = profile_for(_rewards(length=LengthRewardConfig(bonus=0.2, min_tokens=2, max_tokens=5,
                                                                         count="response")))
    scores = counted_by_response.score_group([right, right], MC, response_tokens=[4, 9], thinking_tokens=[9, 4])
    assert [s["length_bonus"] for s in scores] == [0.2, 0.0]
    assert "length_bonus" not in profile_for(_rewards()).score_group([right], MC, response_tokens=[1],
                                                                      thinking_tokens=[1])[0]


def test_format_as_gate_or_additive_term_and_weights():
    unformatted = "the answer is B"  # correct letter, no tags: the lenient format reward is 0
    assert profile_for(_rewards()).score(unformatted, MC)["accuracy"] == 0.0  # parse needs <answer>
    bare = "<answer>B</answer>"  # answer tag without thinking: format 0, accuracy 1
    additive = profile_for(_rewards(format="additive")).score(bare, MC)
    gated = profile_for(_rewards(format="gate")).score(bare, MC)
    assert (additive["accuracy"], additive["format"], additive["total"]) == (1.0, 0.0, 1.0)
    assert (gated["accuracy"], gated["total"]) == (0.0, 0.0)
    weighted = profile_for(_rewards(weights={"accuracy": 2.0, "format": 0.5})).score(
        "<think>y</think><answer>B</answer>", MC)
    assert weighted["total"] == pytest.approx(2.0 * 1.0 + 0.5 * 0.5)


def _rollout(text: str) -> Rollout:
    return Rollout(id="q/g/0/0", sample_id="q", group_index=0, text=text, thinking_tokens=5)


@pytest.mark.parametrize("mode, correct", [("gate", False), ("additive", True)])
def test_the_verifier_judges_correctness_with_grpos_profile(mode, correct):
    profile = profile_for(_rewards(format=mode))
    text = "<answer>B</answer>"
    verdict = check_rollout(_rollout(text), MC, profile, VerifierConfig())
    assert verdict.correct is correct
    assert profile.is_correct(profile.score(text, MC)) is correct


def test_one_correct_threshold_for_grpo_and_the_verifier():
    ocr = Sample(id="q", problem="Read it", problem_type="OCR", answer="red green blue")
    text = "<think>I read red green</think><answer>red green</answer>"  # 1 - WER = 2/3
    lenient = profile_for(_rewards(correct_threshold=0.5))
    assert lenient.is_correct(lenient.score(text, ocr))
    assert check_rollout(_rollout(text), ocr, lenient, VerifierConfig()).correct
    strict = profile_for(_rewards())
    assert not check_rollout(_rollout(text), ocr, strict, VerifierConfig()).correct
    # the verifier may still set its own
    assert not check_rollout(_rollout(text), ocr, lenient, VerifierConfig(correct_threshold=0.9)).correct
