"""Peer scorers re-implemented rule for rule, so our numbers can be compared with published ones.

- Video-R1 (tulerfeng/Video-R1) ``src/r1-v/src/open_r1/grpo.py``: ``accuracy_reward`` and ``format_reward``.
- Video-R1 ``src/eval_bench.py``: ``reward_fn`` (the evaluation reward).
- VerIPO (HITsz-TMG/VerIPO) ``evaluation/calculate_score.py``: the per-item score it adds to ``acc``.

Agreement with each peer's own output on 42 edge cases is tested against
``../shared/data/golden/reward_goldens.jsonl``. Where a peer raised (or skipped an item), we return 0.0:
that is what the item contributes to the peer's accuracy. All string work is linear time.
"""

from __future__ import annotations

from collections.abc import Callable

from veripo.data.records import Sample
from veripo.rewards.mathcheck import veripo_math_verify
from veripo.rewards.metrics import (
    mean_relative_accuracy_videor1,
    mra_from_relative_error,
    ocr_accuracy,
    relative_error_accuracy,
    rouge_mean_f1,
)
from veripo.rewards.parsing import strict_format_ok


def first_answer_block(text: str) -> str:
    """Video-R1 ``extract_answer``: ``re.search(r'<answer>\\s*(.*?)\\s*</answer>', text, re.DOTALL)``, stripped.

    VerIPO's ``re.search(r'<answer>(.*?)</answer>', ...).group(1).strip()`` gives the same string.

    Same result without the regex: the leftmost ``<answer>`` matches iff a ``</answer>`` follows it, and
    the lazy group ends at the first such ``</answer>``.
    """
    start = text.find("<answer>")
    if start < 0:
        return ""
    end = text.find("</answer>", start + 8)
    return text[start + 8 : end].strip() if end >= 0 else ""


def _videor1_number(text: str) -> float | None:
    """Video-R1 ``normalize_number``: drop every comma, then ``float()`` (which accepts "1e3", "inf", " 2 ")."""
    try:
        return float(text.replace(",", ""))
    except (ValueError, OverflowError):
        return None


def _videor1_numerical(gold: str, pred: str) -> float:
    """Both or neither must contain "." or ","; then equal after ``round(x, 2)``."""
    if (("." in gold) or ("," in gold)) != (("." in pred) or ("," in pred)):
        return 0.0
    gold_number, pred_number = _videor1_number(gold), _videor1_number(pred)
    if gold_number is None or pred_number is None:
        return 0.0
    try:
        return 1.0 if round(gold_number, 2) == round(pred_number, 2) else 0.0
    except (OverflowError, ValueError):  # round(inf) / round(nan): the peer's except -> 0
        return 0.0


def videor1_train_accuracy(completion: str, sample: Sample) -> float:
    """Video-R1 GRPO ``accuracy_reward`` for one completion (any exception in the peer scores 0)."""
    pred = first_answer_block(completion)
    gold = sample.answer.strip()
    kind = sample.problem_type
    if kind == "OCR":
        return ocr_accuracy(gold, pred)
    if kind == "free-form":
        return rouge_mean_f1(gold, pred)
    return _videor1_closed_form(kind, gold, pred, relative_error_accuracy)


def videor1_format(completion: str, sample: Sample) -> float:
    """Video-R1 ``format_reward``: 1.0 when ``<think>.*?</think>\\s*<answer>.*?</answer>`` matches the whole text."""
    return 1.0 if strict_format_ok(completion) else 0.0


def videor1_eval_reward(completion: str, sample: Sample) -> float:
    """Video-R1 ``eval_bench.py`` ``reward_fn``: with no (or an empty) answer tag the whole output is the
    answer; multiple choice exact, numerical as in training, regression by float32 MRA, others 0.
    """
    pred = first_answer_block(completion) or completion
    gold = sample.answer.strip()
    return _videor1_closed_form(sample.problem_type, gold, pred, mean_relative_accuracy_videor1)


def _videor1_closed_form(kind: str, gold: str, pred: str, regression: Callable[[float, float], float]) -> float:
    """The branches Video-R1's training and eval rewards share; they differ only in the regression metric."""
    if kind == "multiple choice":
        return 1.0 if pred.strip() == gold else 0.0
    if kind == "numerical":
        return _videor1_numerical(gold, pred)
    if kind == "regression":
        gold_number, pred_number = _videor1_number(gold), _videor1_number(pred)
        if gold_number is None or pred_number is None:
            return 0.0
        return regression(pred_number, gold_number)
    return 0.0


_VERIPO_CHOICES = "abcdefghij"


def _veripo_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError, TypeError):
        return None


def veripo_eval_score(completion: str, sample: Sample) -> float:
    """VerIPO ``calculate_score.py``, one item.

    - Gold is all upper-case letters (``isalpha() and isupper()``): correct when the gold letter occurs in
      the first answer block (case-insensitively) and none of the other letters a-j does.
    - Regression (the peer's ``vsi_bench`` branch): MRA of the first space-separated token of the answer,
      ``$`` and a trailing "." removed; an empty answer, a non-number or a zero gold (the peer raises and
      skips the item) score 0.
    - Otherwise math-verify on the whole output against ``$gold$``.
    """
    gold = str(sample.answer)
    if gold.isalpha() and gold.isupper():
        answer = first_answer_block(completion).replace("</answer>", "").replace("<answer>", "").strip()
        lowered, letter = answer.lower(), gold.lower()
        if letter in lowered and all(c not in lowered for c in _VERIPO_CHOICES if c != letter):
            return 1.0
        return 0.0
    if sample.problem_type == "regression":
        answer = first_answer_block(completion)
        if not answer:
            return 0.0
        answer = answer.replace("</answer>", "").replace("<answer>", "").strip().strip("$")
        pred = _veripo_float(answer.split(" ")[0].rstrip(".").strip())
        target = _veripo_float(gold.strip("$").strip())
        if pred is None or target is None or target == 0:
            return 0.0
        # The peer divides by the signed gold (``abs(pred - target) / target``): kept as is.
        return mra_from_relative_error(abs(pred - target) / target)
    return veripo_math_verify(completion, gold)


def veripo_format(completion: str, sample: Sample) -> float:
    """1.0 when exactly one ``<think>`` block is followed by exactly one ``<answer>`` block (VerIPO's regex,
    decided by counting tags so it stays linear on hostile text)."""
    counts = [completion.count(tag) for tag in ("<think>", "</think>", "<answer>", "</answer>")]
    if counts != [1, 1, 1, 1]:
        return 0.0
    think_open = completion.find("<think>")
    think_close = completion.find("</think>")
    answer_open = completion.find("<answer>")
    answer_close = completion.find("</answer>")
    if not think_open + 7 < think_close:  # (.+?) needs at least one character
        return 0.0
    if completion[think_close + 8 : answer_open].strip() or answer_open < think_close + 8:
        return 0.0
    return 1.0 if answer_open + 8 < answer_close else 0.0
