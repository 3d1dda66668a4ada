"""Hand-computed values for every registered reward, the group reward and the profiles."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veripo.data.records import Sample
from veripo.rewards import (
    REWARDS,
    adaptive_length_rewards,
    get_profile,
    get_reward,
    register_reward,
)
from veripo.rewards.metrics import (
    mean_relative_accuracy,
    mean_relative_accuracy_videor1,
    relative_error_accuracy,
    rouge_mean_f1,
    word_error_rate,
)
from veripo.rewards.peers import veripo_format
from veripo.rewards.text_checks import repetition_ratio


def sample(kind: str, answer: str, options: list[str] | None = None, sid: str = "q") -> Sample:
    return Sample(id=sid, problem="q", problem_type=kind, answer=answer, options=options or [])


def done(answer: str, thinking: str = "because") -> str:
    return f"<think>{thinking}</think><answer>{answer}</answer>"


MC = sample("multiple choice", "B", ["A. red", "B. blue", "C. green"])


@pytest.mark.parametrize(
    "name, completion, gold, expected",
    [
        ("accuracy_multiple_choice", done("(B)"), MC, 1.0),
        ("accuracy_multiple_choice", done("blue"), MC, 1.0),
        ("accuracy_multiple_choice", done("C"), MC, 0.0),
        ("accuracy_numerical", done("1,000"), sample("numerical", "1000"), 1.0),
        ("accuracy_numerical", done("3.43"), sample("numerical", "3.429"), 1.0),  # round(., 2) equal
        ("accuracy_numerical", done("12.914"), sample("numerical", "12.97"), 0.0),
        ("accuracy_ocr", done("14 = 4 + 2 + 8"), sample("OCR", "1 4 = 4 + 2 + 8"), 0.75),  # 2 edits / 8 words
        ("accuracy_ocr", done("stop here"), sample("OCR", "STOP HERE"), 1.0),
        ("accuracy_ocr", done("hello big wide world again"), sample("OCR", "hello world"), 0.0),  # WER 1.5
        ("accuracy_free_form", done("the cat sat"), sample("free-form", "the cat sat"), 1.0),
        ("accuracy_regression", done("10"), sample("regression", "8"), 0.75),  # 1 - 2/8
        ("accuracy_regression", done("20"), sample("regression", "4"), 0.0),
        ("accuracy_mra", done("10"), sample("regression", "8"), 0.6),  # rel 0.25 <= 1 - t for t = 0.50..0.75
        ("accuracy_mra", done("0"), sample("regression", "0"), 1.0),
        ("accuracy_mra", done("abc"), sample("regression", "3"), 0.0),
        ("accuracy_math", done("\\frac{1}{2}"), sample("math", "0.5"), 1.0),
        ("accuracy_math", done("2\\sqrt{2}"), sample("math", "\\sqrt{8}"), 1.0),
        ("accuracy_math", done("3"), sample("math", "0.5"), 0.0),
        ("accuracy", done("\\frac{6}{3}"), sample("numerical", "2"), 1.0),  # math-verify fallback
        ("accuracy", done("B"), sample("unknown type", "B"), 0.0),
        ("format_strict", done("B"), MC, 1.0),
        ("format_strict", done("B") + " x", MC, 0.0),
        ("format_lenient", done("B") + " x", MC, 0.5),
        ("format_lenient", done("B") + done("B"), MC, 0.0),
        ("accuracy_gated", done("B"), MC, 1.0),
        ("accuracy_gated", "<answer>B</answer>", MC, 0.0),
        ("length", done("x", " ".join(["w"] * 120)), MC, 0.5),  # 120 / 240
        ("length", done("x", " ".join(["w"] * 300)), MC, 1.0),
        ("length", done("x", " ".join(["w"] * 576)), MC, 0.5),  # 1 - (576 - 384) / 384
        ("repetition", done("B", "the ball moves left and then it stops near the wall"), MC, 0.0),
        ("repetition", done("B", " ".join(["wait so"] * 200)), MC, pytest.approx(-(1 - 2 / 397 - 0.2) / 0.8)),
        ("videor1_accuracy", done("B"), MC, 1.0),
        ("videor1_format", done("B"), MC, 1.0),
        ("videor1_eval", "B", MC, 1.0),
        ("veripo_eval", done("$B$"), MC, 1.0),
        ("veripo_eval", done("B or C"), MC, 0.0),
        ("veripo_format", done("B") + " after", MC, 1.0),
    ],
)
def test_reward_value(name: str, completion: str, gold: Sample, expected: float) -> None:
    assert get_reward(name)(completion, gold) == expected


def test_every_reward_has_a_hand_computed_case() -> None:
    tested = {"accuracy_multiple_choice", "accuracy_numerical", "accuracy_ocr", "accuracy_free_form",
              "accuracy_regression", "accuracy_mra", "accuracy_math", "accuracy", "format_strict",
              "format_lenient", "accuracy_gated", "length", "repetition", "videor1_accuracy", "videor1_format",
              "videor1_eval", "veripo_eval", "veripo_format"}  # fmt: skip
    assert set(REWARDS) - tested == set()


def test_metrics_by_hand() -> None:
    assert word_error_rate("a b c d", "a x c") == 0.5  # 1 substitution + 1 deletion over 4
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("a b", "") == 1.0
    # ROUGE-1 F1 2/3 (2 of 3 unigrams each side), ROUGE-2 F1 1/2, ROUGE-L F1 2/3 -> mean 11/18
    assert rouge_mean_f1("the cat sat", "the cat ran") == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert relative_error_accuracy(9.62, 9.62) == pytest.approx(1 - 1e-9 / (9.62 + 1e-9))
    assert relative_error_accuracy(0.0, 0.0) == 0.0  # Video-R1's epsilon quirk
    assert mean_relative_accuracy(3.15, 2.1) == pytest.approx(0.1)
    assert mean_relative_accuracy(1e308, float("nan")) == 0.0


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False))
def test_videor1_mra_matches_torch(pred: float, gold: float) -> None:
    torch = pytest.importorskip("torch")
    p, t = torch.tensor(pred, dtype=torch.float32), torch.tensor(gold, dtype=torch.float32)
    rel = torch.abs(p - t) / (torch.abs(t) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)
    expected = (rel < (1 - thresholds)).float().mean().item()
    assert mean_relative_accuracy_videor1(pred, gold) == expected


_VERIPO_REGEX = re.compile(
    r"^(?=(?:.*<think>){1})(?=(?:.*<\/think>){1})(?=(?:.*<answer>){1})(?=(?:.*<\/answer>){1})"
    r"(?!.*<think>.*<think>)(?!.*<\/think>.*<\/think>)(?!.*<answer>.*<answer>)(?!.*<\/answer>.*<\/answer>)"
    r".*<think>(.+?)</think>\s*<answer>.+?</answer>.*$",
    re.DOTALL,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "x"]), max_size=10))
def test_veripo_format_equals_peer_regex(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert veripo_format(text, MC) == (1.0 if _VERIPO_REGEX.search(text) else 0.0)


def test_repetition_ratio() -> None:
    assert repetition_ratio("a b c d e f g h") == 0.0
    assert repetition_ratio("x" * 500) == pytest.approx(1 - 1 / 497)
    assert repetition_ratio("short") == 0.0


def test_adaptive_length_rewards_by_hand() -> None:
    short, long = done("A", "w " * 10), done("A", "w " * 30)
    hard = [sample("multiple choice", "A", sid="hard")] * 4
    easy = [sample("multiple choice", "A", sid="easy")] * 4
    # hard: accuracies 1,0,0,0 -> d = 0.75, 2d - 1 = 0.5; lengths 30,10,10,10: mean 15, std sqrt(75)
    rewards = adaptive_length_rewards([long, short, short, short] * 2, hard + easy, [1, 0, 0, 0, 1, 1, 1, 0])
    z = min(1.0, 15 / (75**0.5 + 1))
    assert rewards[0] == pytest.approx(0.2 * 1 * 0.5 * z)
    assert rewards[1:4] == [0.0, 0.0, 0.0]  # wrong rollouts: no length credit
    # easy: d = 0.25, 2d - 1 = -0.5: the long correct rollout is penalised, short correct ones gain
    assert rewards[4] == pytest.approx(-0.2 * 0.5 * z)
    assert rewards[5] == pytest.approx(-0.2 * 0.5 * -5 / (75**0.5 + 1)) and rewards[5] > 0
    assert rewards[7] == 0.0
    assert adaptive_length_rewards([short], hard[:1], [1.0]) == [0.0]
    with pytest.raises(ValueError, match="equal lengths"):
        adaptive_length_rewards([short], [], [1.0])


def test_profiles_and_weights() -> None:
    assert get_profile("videor1-train").score(done("B"), MC) == {"accuracy": 1.0, "format": 1.0, "total": 2.0}
    assert get_profile("veripo").score(done("B"), MC) == {"accuracy": 1.0, "format": 0.5, "total": 1.5}
    assert get_profile("veripo-eval").score(done("B"), MC)["total"] == 1.0
    custom = get_profile("veripo").with_extras(("repetition",), {"repetition": 2.0, "format": 0.0})
    looping = done("B", " ".join(["wait so"] * 200))
    out = custom.score(looping, MC)
    assert out["total"] == pytest.approx(1.0 + 2.0 * out["repetition"]) and out["repetition"] < -0.9
    gated = get_profile("veripo").__class__("gated", accuracy="accuracy", format="format_lenient", gate_on_format=True)
    assert gated.score("<answer>B</answer>", MC)["accuracy"] == 0.0
    with pytest.raises(KeyError, match="unknown scoring profile 'nope'"):
        get_profile("nope")
    with pytest.raises(KeyError, match="unknown reward"):
        get_profile("veripo").with_extras(("nope",))
    with pytest.raises(KeyError, match="do not name"):
        get_profile("veripo").with_extras((), {"lenght": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(lambda c, s: 0.0)


def test_numpy_float64_mra_thresholds_match_peer() -> None:
    # VerIPO: np.linspace(.5, .95, int((.95 - .5) / .05 + 2)) has 10 points (int(10.999...) == 10)
    assert len(np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))) == 10


def test_build_profile_from_reward_config() -> None:
    from veripo.config.schema import RewardConfig
    from veripo.rewards import build_profile

    cfg = RewardConfig(profile="veripo", extra=("length",), weights={"length": 0.5})
    profile = build_profile(cfg.profile, cfg.extra, cfg.weights)
    assert profile.extras == (("length", 0.5),)
    assert build_profile("veripo") is get_profile("veripo")
