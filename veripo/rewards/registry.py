"""Rewards as pure functions ``(completion, sample) -> float`` in a registry, selectable by name in config.

Our own accuracy rewards read the answer with :func:`parse_completion` (tolerant of real model output) and
compare it per problem type; the peers' exact rules live in ``veripo.rewards.peers`` and are registered
here too. Every reward returns a finite float in its documented range and never raises on any text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from veripo.config.plugins import check_callable, import_object, is_import_path
from veripo.data.records import Sample
from veripo.rewards import peers
from veripo.rewards.mathcheck import math_equal
from veripo.rewards.metrics import (
    mean_relative_accuracy,
    ocr_accuracy,
    relative_accuracy,
    rouge_mean_f1,
)
from veripo.rewards.parsing import extract_choice, extract_number, option_letters, parse_completion
from veripo.rewards.text_checks import repetition_ratio, word_count


class RewardFn(Protocol):
    def __call__(self, completion: str, sample: Sample) -> float: ...


REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: add a reward to :data:`REWARDS` under ``name`` (names are unique)."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered ({REWARDS[name]!r})")
        REWARDS[name] = fn
        return fn

    return add


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``, or a user's reward named by import path (``mypkg.rewards:my_reward``),
    imported, checked and registered under that path on first use (in scoring workers too); the error lists
    the known names, or says why the path does not load."""
    if name not in REWARDS and is_import_path(name):
        return load_reward(name)
    try:
        return REWARDS[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; expected one of: {', '.join(sorted(REWARDS))} (or an import "
                       "path 'package.module:function')") from None


def load_reward(path: str) -> RewardFn:
    """Import the reward function at ``path``, check it takes ``(completion, sample)``, register it as ``path``.
    ``ValueError`` when it does not import or has the wrong signature."""
    fn = check_callable(import_object(path, "reward"), path, "reward", ("completion", "sample"))
    return register_reward(path)(fn)


# ---- accuracy per problem type (ours) -------------------------------------------------------------------


def _answer(completion: str) -> str | None:
    return parse_completion(completion).answer


@register_reward("accuracy_multiple_choice")
def multiple_choice_accuracy(completion: str, sample: Sample) -> float:
    """1.0 when the option letter read from the answer (``B``, ``(B)``, ``$B$``, ``B. text``, the option's
    text) is the gold letter."""
    choice = extract_choice(_answer(completion), sample.options)
    return 1.0 if choice is not None and choice == sample.answer.strip().upper() else 0.0


def _numbers(completion: str, sample: Sample) -> tuple[float, float] | None:
    pred = extract_number(_answer(completion))
    gold = extract_number(sample.answer)
    return None if pred is None or gold is None else (pred, gold)


@register_reward("accuracy_numerical")
def numerical_accuracy(completion: str, sample: Sample) -> float:
    """1.0 when the numbers agree after rounding to 2 decimals (Video-R1's rule, without its "both or
    neither has a decimal point" condition, and reading ``1,000``, ``$12$``, ``60 degrees``, ``1e3``)."""
    pair = _numbers(completion, sample)
    if pair is None:
        return 0.0
    pred, gold = pair
    try:
        return 1.0 if round(pred, 2) == round(gold, 2) else 0.0
    except OverflowError:
        return 0.0


@register_reward("accuracy_ocr")
def ocr_answer_accuracy(completion: str, sample: Sample) -> float:
    """``1 - WER`` in [0, 1] on lower-cased whitespace-split words (Video-R1 compares case-sensitively)."""
    answer = _answer(completion) or ""
    return ocr_accuracy(sample.answer.lower(), answer.lower())


@register_reward("accuracy_free_form")
def free_form_accuracy(completion: str, sample: Sample) -> float:
    """Mean ROUGE-1/2/L F1 with stemming, in [0, 1] (Video-R1's free-form reward)."""
    return rouge_mean_f1(sample.answer, _answer(completion) or "")


@register_reward("accuracy_regression")
def regression_accuracy(completion: str, sample: Sample) -> float:
    """``1 - relative error`` clipped to [0, 1] (Video-R1's regression reward without its epsilon, so a zero
    gold is scored by absolute error instead of always 0)."""
    pair = _numbers(completion, sample)
    return 0.0 if pair is None else relative_accuracy(*pair)


@register_reward("accuracy_mra")
def mra_accuracy(completion: str, sample: Sample) -> float:
    """VSI-Bench mean relative accuracy over thresholds 0.50..0.95, in [0, 1]."""
    pair = _numbers(completion, sample)
    return 0.0 if pair is None else mean_relative_accuracy(*pair)


@register_reward("accuracy_math")
def math_accuracy(completion: str, sample: Sample) -> float:
    """1.0 when math-verify finds the answer equal to the gold (guarded and timed out, see mathcheck)."""
    answer = _answer(completion)
    if not answer:
        return 0.0
    return 1.0 if math_equal(answer, sample.answer) else 0.0


def gold_problem(sample: Sample) -> tuple[str, str] | None:
    """``(field, reason)`` when no accuracy reward can ever score ``sample`` above 0 (training on it would
    push every response down), else None: an empty gold answer, or a multiple-choice gold that is not one of
    the option letters ``multiple_choice_accuracy`` compares with."""
    gold = sample.answer.strip()
    if not gold:
        return "answer", "the gold answer is empty"
    if sample.problem_type == "multiple choice":
        letters = option_letters(sample.options)
        if gold.upper() not in letters or len(gold) != 1:
            return "answer", (f"multiple-choice gold {gold[:40]!r} is not one of the option letters {', '.join(letters)}; "
                              "no answer could ever be scored correct")
    return None


ACCURACY_BY_TYPE: dict[str, RewardFn] = {
    "multiple choice": multiple_choice_accuracy,
    "numerical": numerical_accuracy,
    "OCR": ocr_answer_accuracy,
    "free-form": free_form_accuracy,
    "regression": mra_accuracy,
    "math": math_accuracy,
}


@register_reward("accuracy")
def accuracy(completion: str, sample: Sample) -> float:
    """Our accuracy, dispatched on ``sample.problem_type`` (regression uses MRA as VerIPO does); an unknown
    type scores 0. Numerical answers math-verify cannot read as numbers fall back to math-verify."""
    reward = ACCURACY_BY_TYPE.get(sample.problem_type)
    if reward is None:
        return 0.0
    score = reward(completion, sample)
    if score == 0.0 and sample.problem_type == "numerical" and extract_number(_answer(completion)) is None:
        return math_accuracy(completion, sample)
    return score


# ---- format, gating ------------------------------------------------------------------------------------


@register_reward("format_strict")
def strict_format(completion: str, sample: Sample) -> float:
    """1.0 for a full match of ``<think>...</think>\\s*<answer>...</answer>`` (Video-R1), else 0."""
    return 1.0 if parse_completion(completion).strict_format_ok else 0.0


@register_reward("format_lenient")
def lenient_format(completion: str, sample: Sample) -> float:
    """0.5 for exactly one think block followed by exactly one answer block (the VerIPO lineage), else 0."""
    return 0.5 if parse_completion(completion).format_ok else 0.0


@register_reward("accuracy_gated")
def format_gated_accuracy(completion: str, sample: Sample) -> float:
    """Our accuracy, but 0 unless the lenient format holds (no credit for an answer the format rule
    cannot see)."""
    return accuracy(completion, sample) if parse_completion(completion).format_ok else 0.0


# ---- length and repetition -----------------------------------------------------------------------------

LENGTH_BAND_WORDS = (240, 384)  # Video-R1 rewards 320..512 tokens; ~0.75 words per token


@register_reward("length")
def length_reward(completion: str, sample: Sample) -> float:
    """1.0 when the thinking has 240..384 words (Video-R1's 320..512-token band), rising linearly from 0
    below the band and falling linearly to 0 at twice its top; in [0, 1]."""
    thinking = parse_completion(completion).thinking or ""
    words = word_count(thinking)
    low, high = LENGTH_BAND_WORDS
    if words < low:
        return words / low
    if words <= high:
        return 1.0
    return max(0.0, 1.0 - (words - high) / high)


@register_reward("repetition")
def repetition_penalty(completion: str, sample: Sample) -> float:
    """A penalty in [-1, 0]: ``-max(0, r - 0.2) / 0.8`` where r is the share of repeated 4-grams in the
    thinking (or whole text when there is none); text that loops scores near -1, normal prose 0."""
    parsed = parse_completion(completion)
    ratio = repetition_ratio(parsed.thinking if parsed.thinking else completion)
    return -max(0.0, ratio - 0.2) / 0.8


# ---- peers ---------------------------------------------------------------------------------------------

for _name, _fn in {
    "videor1_accuracy": peers.videor1_train_accuracy,
    "videor1_format": peers.videor1_format,
    "videor1_eval": peers.videor1_eval_reward,
    "veripo_eval": peers.veripo_eval_score,
    "veripo_format": peers.veripo_format,
}.items():
    register_reward(_name)(_fn)
