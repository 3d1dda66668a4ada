"""Cheap statistics of a text used by the length and repetition rewards (and by the verifier)."""

from __future__ import annotations

MAX_TOKENS = 50_000  # a repetition estimate over the first 50k tokens is as good as over all of them


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def repetition_ratio(text: str, n: int = 4) -> float:
    """Share of repeated n-grams: ``1 - distinct n-grams / n-grams``, in [0, 1].

    Words are the tokens; text with few words but many characters (a loop without spaces, CJK) uses
    characters instead. Texts with fewer than ``2 * n`` tokens score 0.
    """
    tokens: list[str] | str = text.split()[:MAX_TOKENS]
    if len(tokens) < 2 * n and len(text) > 16 * n:
        tokens = text[:MAX_TOKENS]
    if len(tokens) < 2 * n:
        return 0.0
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)
