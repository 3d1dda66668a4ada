"""Rule checks of the Rollout-Aware Verifier: repetition, reflection, and the conclusion a chain reaches.

All linear-time string work on untrusted text (nothing evaluated, bounded regexes on bounded slices).
"""

from __future__ import annotations

import re
from collections import Counter

from veripo.data.records import Sample
from veripo.rewards import extract_choice, extract_number

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")
# Phrases with which a chain notices a mistake and revisits it (VerIPO's "reflective" chains).
REFLECTION_MARKERS = re.compile(
    r"\b(wait|actually|hmm|on second thought|let me (?:re-?check|check again|recount|look again|verify)|"
    r"i made a mistake|that(?:'s| is) wrong|correction|re-?examin\w*)\b",
    re.IGNORECASE,
)
_CONCLUSION_CUES = re.compile(r"\b(answer|so|therefore|thus|hence|option|choice|result)\b", re.IGNORECASE)


def repetition_share(text: str, n: int = 4, max_words: int = 20_000) -> float:
    """Share of word n-grams that repeat an earlier n-gram (0 = none, -> 1 = a loop), over the first
    ``max_words`` words. Short texts (fewer than ``2n`` words) score 0."""
    words = [w.lower() for w in _WORD.findall(text[: max_words * 12])][:max_words]
    if len(words) < 2 * n:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return (total - len(grams)) / total


def repeated_line_share(text: str) -> float:
    """Share of non-empty lines that duplicate an earlier line (catches 'Frame 3: ...' loops)."""
    lines = [line.strip() for line in text[:200_000].splitlines() if line.strip()]
    if len(lines) < 3:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def is_repetitive(text: str, n: int = 4, threshold: float = 0.5) -> bool:
    return repetition_share(text, n) > threshold or repeated_line_share(text) > threshold


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def conclusion(thinking: str | None, sample: Sample) -> str | None:
    """The answer a chain of thought settles on near its end, normalised like the final answer would be:
    an option letter for multiple choice, a number (as text) for numeric types, else the last sentence's
    words. None when the end of the chain states no recognisable conclusion."""
    if not thinking:
        return None
    tail = sentences(thinking[-2000:])[-3:]
    for sentence in reversed(tail):  # the last sentence that concludes something
        found = _conclusion_in(sentence, sample)
        if found is not None:
            return found
    return None


def _conclusion_in(sentence: str, sample: Sample) -> str | None:
    if sample.problem_type == "multiple choice":
        # the last cue that names an option: "Yellow is option B, so the answer is A" concludes A
        for cued in reversed(list(_CONCLUSION_CUES.finditer(sentence))):
            letter = extract_choice(sentence[cued.start():], sample.options)
            if letter is not None:
                return letter
        return _single_option_text(sentence, sample.options)
    if sample.problem_type in ("numerical", "regression", "math"):
        numbers = re.findall(r"-?\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?", sentence)
        if numbers:
            value = extract_number(numbers[-1])
            return None if value is None else _number_text(value)
        value = extract_number(sentence)
        return None if value is None else _number_text(value)
    cues = list(_FREE_FORM_CUES.finditer(sentence))
    if not cues:
        return None
    clause = " ".join(w.lower() for w in _WORD.findall(sentence[cues[-1].end():]))
    return clause or None


_FREE_FORM_CUES = re.compile(r"\b(?:answer(?: is|:)?|therefore|thus|hence|so)\b[:,]?", re.IGNORECASE)


def compare_conclusion(concluded: str | None, final: str | None, sample: Sample) -> str:
    """``consistent``/``inconsistent``/``unknown`` for a conclusion against a final answer (both normalised
    by ``conclusion``/``final_answer_key``). Letters and numbers must be equal. Free text (OCR, free-form)
    is consistent when one word sequence contains the other ("the man is sitting" / "sitting"),
    inconsistent when they share no content word ("the man is sitting" / "he is running", VerIPO's
    example), and unknown in between (a rule cannot tell)."""
    if concluded is None or final is None:
        return "unknown"
    if sample.problem_type in ("multiple choice", "numerical", "regression", "math"):
        return "consistent" if concluded == final else "inconsistent"
    a, b = f" {concluded} ", f" {final} "
    if a in b or b in a:
        return "consistent"
    shared = (set(concluded.split()) & set(final.split())) - _FUNCTION_WORDS
    return "inconsistent" if not shared else "unknown"


# words that say nothing about what was concluded ("he IS running" vs "the man IS sitting" share no content)
_FUNCTION_WORDS = frozenset(
    ["a", "an", "the", "is", "are", "was", "were", "be", "been", "it", "its", "he", "she", "they", "them", "his", "her", "their", "this", "that", "these", "those", "of", "to", "in", "on", "at", "by", "for", "with", "and", "or", "as", "there", "here"])


def _single_option_text(sentence: str, options: list[str]) -> str | None:
    """The letter of the one option whose text the sentence names (None if none or several)."""
    lowered = " " + " ".join(_WORD.findall(sentence.lower())) + " "
    hits: dict[str, str] = {}  # letter -> option text named in the sentence
    for option in options:
        m = re.match(r"\s*\(?([A-Za-z])[.):]\s*(.+)", option)
        text = " ".join(_WORD.findall(m.group(2).lower())) if m else ""
        if text and f" {text} " in lowered:
            hits[m.group(1).upper()] = text
    if not hits:
        return None
    # "moved left" names option "moved left", not also option "left": the longest text wins if it holds the rest
    letter, longest = max(hits.items(), key=lambda kv: len(kv[1]))
    return letter if all(f" {t} " in f" {longest} " for t in hits.values()) else None


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def final_answer_key(answer: str | None, sample: Sample) -> str | None:
    """The final answer in the same normal form as ``conclusion``."""
    if answer is None:
        return None
    if sample.problem_type == "multiple choice":
        return extract_choice(answer, sample.options)
    if sample.problem_type in ("numerical", "regression", "math"):
        value = extract_number(answer)
        return None if value is None else _number_text(value)
    return " ".join(w.lower() for w in _WORD.findall(answer)) or None


def conclusions_along(thinking: str | None, sample: Sample) -> list[str]:
    """Every conclusion stated sentence by sentence, in order (for reflection: did the chain change its mind?)."""
    if not thinking:
        return []
    found = []
    for sentence in sentences(thinking[:20_000]):
        c = _conclusion_in(sentence, sample) if _CONCLUSION_CUES.search(sentence) else None
        if c is not None and (not found or found[-1] != c):
            found.append(c)
    return found


def is_reflective(thinking: str | None, sample: Sample) -> bool:
    """A chain that notices a mistake and corrects it: a reflection marker, and a change of conclusion
    after the first one it states."""
    if not thinking or not REFLECTION_MARKERS.search(thinking[:20_000]):
        return False
    return len(conclusions_along(thinking, sample)) >= 2
