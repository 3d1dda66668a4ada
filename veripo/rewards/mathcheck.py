"""math-verify behind a guard: never evaluates code, refuses inputs built to hang a CAS, times out.

math-verify parses LaTeX/expressions into sympy objects and compares them. Its own timeout uses
``signal.alarm``, which only works in the main thread, so it is switched on only there; elsewhere the
guard below keeps out the inputs known to make sympy compute for minutes (power towers, huge factorials,
deep nesting), and ``veripo.rewards.batch.score_batch`` adds a hard per-item kill in worker processes.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

MAX_MATH_CHARS = 100_000  # longer text is not handed to the CAS at all
MAX_BRACE_DEPTH = 64

# Two exponent operators around one operand: 9**9**9, 9^{9^{9}}, 2^(3^4).
_TOWER = re.compile(r"(?:\*\*|\^)\s*[{(]?\s*[\w.]+\s*[)}]?\s*(?:\*\*|\^)|\^\s*\{[^{}]*(?:\^|\*\*)")
_BIG_EXPONENT = re.compile(r"(?:\*\*|\^)\s*[{(]?\s*\d{4,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!")


def unsafe_math_reason(text: str) -> str | None:
    """Why ``text`` is not handed to math-verify, or None when it is fine."""
    if len(text) > MAX_MATH_CHARS:
        return "math input too long"
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth = max(0, depth - 1)
    if deepest > MAX_BRACE_DEPTH:
        return "math input nested too deeply"
    if _TOWER.search(text) or _BIG_EXPONENT.search(text) or _BIG_FACTORIAL.search(text):
        return "math input would make the CAS compute a huge number"
    return None


def _timeout(seconds: int) -> int | None:
    return seconds if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    import math_verify

    # math-verify logs a warning per call when its timeout is off (threads) and per timeout hit.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    return math_verify


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None) -> Any:
    mv = _math_verify()
    return mv.parse(gold, parsing_timeout=timeout)


def math_equal(pred: str, gold: str, *, timeout_s: int = 5) -> bool:
    """Whether the answer text ``pred`` equals ``gold`` mathematically (math-verify, gold wrapped in ``$``).

    Used by our own profile on the *answer* only. Returns False for unsafe or unparsable input. Cached:
    the rollouts of one question repeat the same few answers, and a sympy comparison costs milliseconds.
    """
    if unsafe_math_reason(pred) or unsafe_math_reason(gold):
        return False
    if len(pred) + len(gold) > 2000:  # long texts are not kept in the cache
        return _math_equal(pred, gold, timeout_s)
    return _cached_math_equal(pred, gold, timeout_s)


def _math_equal(pred: str, gold: str, timeout_s: int) -> bool:
    mv = _math_verify()
    timeout = _timeout(timeout_s)
    gold_text = gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"
    try:
        gold_parsed = _parse_gold(gold_text, timeout)
        pred_text = pred if ("$" in pred or "\\boxed" in pred) else f"${pred}$"
        pred_parsed = mv.parse(pred_text, parsing_timeout=timeout)
        if not pred_parsed:  # not LaTeX: let the plain-expression extractor try
            pred_parsed = mv.parse(pred, parsing_timeout=timeout)
        return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - any CAS failure on untrusted text is simply "not equal"
        return False


_cached_math_equal = functools.lru_cache(maxsize=65536)(_math_equal)


def veripo_math_verify(model_output: str, ground_truth: str, *, timeout_s: int = 5) -> float:
    """VerIPO ``calculate_score.py``'s non-choice, non-VSI branch, exactly.

    The gold is parsed as ``$gold$``; the *whole* model output is parsed with string, LaTeX and expression
    extraction (in that priority), and the peer calls ``verify(answer, gold)`` with the arguments in that
    order. The peer's special case for one Video-MMMU gold (``['24/7', '3.429', '3.43']`` -> ``24/7``) is
    kept.
    """
    if ground_truth in ("['24/7', '3.429', '3.43]", "['24/7', '3.429', '3.43']"):
        ground_truth = "24/7"
    if unsafe_math_reason(model_output) or unsafe_math_reason(ground_truth):
        return 0.0
    mv = _math_verify()
    timeout = _timeout(timeout_s)
    try:
        gold_parsed = _parse_gold(f"${ground_truth}$", timeout)
        answer_parsed = mv.parse(
            model_output,
            extraction_config=[mv.StringExtractionConfig(), mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
            parsing_timeout=timeout,
        )
        return float(mv.verify(answer_parsed, gold_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - the peer would crash the whole run; we score the item 0
        return 0.0
