"""Split a completion into thinking and answer, and read a letter or a number out of an answer.

Everything here is linear-time string work (no backtracking-prone regexes over the whole text, nothing
evaluated), so hostile model output of any size is safe to pass in.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

# A tag as models really write it: "<think>", "< think >", "</ answer>", any case.
_TAG = re.compile(r"<\s*(/?)\s*(think|answer)\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedCompletion:
    """What a completion holds and which format rules it breaks.

    ``answer`` is the stripped inner text of the first answer block (or of an unclosed one, up to the end
    of the text); ``format_ok`` is the lenient lineage rule (exactly one think block followed, after
    whitespace only, by exactly one answer block, both non-empty); ``strict_format_ok`` is Video-R1's
    ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", text, re.DOTALL)``; ``truncated`` means an
    opening tag was never closed.
    """

    thinking: str | None
    answer: str | None
    format_ok: bool
    strict_format_ok: bool
    truncated: bool
    problems: tuple[str, ...]


_STRICT_JOIN = re.compile(r"</think>\s*<answer>")


def strict_format_ok(text: str) -> bool:
    """Video-R1 ``format_reward``'s full match, decided in linear time.

    ``<think>A</think>\\s*<answer>B</answer>`` matches the whole text iff the text starts with ``<think>``,
    ends with ``</answer>`` and some ``</think>\\s*<answer>`` sits between them without overlapping either;
    the leftmost such join has the smallest end, so checking it alone is enough.
    """
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    join = _STRICT_JOIN.search(text, 7)
    return join is not None and join.end() <= len(text) - 9


@functools.lru_cache(maxsize=8)  # one completion is parsed by several rewards in a row; texts may be huge
def parse_completion(text: str) -> ParsedCompletion:
    """Parse ``<think>...</think><answer>...</answer>`` tolerantly (see :class:`ParsedCompletion`)."""
    tags = [(m.start(), m.end(), m.group(2).lower(), m.group(1) == "/") for m in _TAG.finditer(text)]
    problems: list[str] = []
    counts = {(name, closing): 0 for name in ("think", "answer") for closing in (False, True)}
    for _, _, name, closing in tags:
        counts[(name, closing)] += 1

    thinking, _, think_end, think_closed = _first_block(text, tags, "think", stop_at="answer")
    answer, answer_start, _, answer_closed = _first_block(text, tags, "answer", stop_at=None)
    boxed = last_boxed(text) if answer is None else None
    boxed_only = boxed is not None
    if boxed_only:  # no answer tag: fall back to the last \boxed{} (the format rule still fails)
        answer = boxed
    truncated = (thinking is not None and not think_closed) or (
        answer is not None and not answer_closed and not boxed_only
    )

    if counts[("think", False)] == 0:
        problems.append("no <think> tag")
    elif counts[("think", False)] > 1 or counts[("think", True)] > 1:
        problems.append("several think blocks")
    if thinking is not None and not think_closed:
        problems.append("unclosed <think>")
    if counts[("answer", False)] == 0:
        problems.append("no <answer> tag")
    elif counts[("answer", False)] > 1 or counts[("answer", True)] > 1:
        problems.append("several answer blocks")
    if answer is not None and not answer_closed and not boxed_only:
        problems.append("unclosed <answer>")
    if thinking is not None and think_closed and answer_start >= 0:
        if answer_start < think_end:
            problems.append("<answer> before </think>")
        elif text[think_end:answer_start].strip():
            problems.append("text between </think> and <answer>")
    if thinking is not None and not thinking:
        problems.append("empty thinking")
    if answer is not None and not answer:
        problems.append("empty answer")
    if counts[("think", True)] > counts[("think", False)] or counts[("answer", True)] > counts[("answer", False)]:
        problems.append("closing tag without opening tag")
    return ParsedCompletion(
        thinking=thinking,
        answer=answer,
        format_ok=not problems,
        strict_format_ok=strict_format_ok(text),
        truncated=truncated,
        problems=tuple(problems),
    )


def _first_block(
    text: str, tags: list[tuple[int, int, str, bool]], name: str, stop_at: str | None
) -> tuple[str | None, int, int, bool]:
    """(stripped inner text, start of the opening tag, end of the block, closed?) of the first ``name`` block.

    A block with no closing tag anywhere after it runs to the next ``stop_at`` opening tag or the end.
    """
    for i, (open_start, open_end, tag_name, closing) in enumerate(tags):
        if tag_name != name or closing:
            continue
        later = tags[i + 1 :]
        for start, end, other, other_closing in later:
            if other == name and other_closing:
                return text[open_end:start].strip(), open_start, end, True
        for start, _, other, other_closing in later:
            if other == stop_at and not other_closing:
                return text[open_end:start].strip(), open_start, start, False
        return text[open_end:].strip(), open_start, len(text), False
    return None, -1, -1, False


def last_boxed(text: str) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` (nested braces allowed), or None if it does not
    close within 10,000 characters."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 1
    for i in range(start + 7, min(len(text), start + 10_007)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 7 : i].strip()
    return None


# ---- letters -------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\s*\{([^{}]*)\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_LEADING_LETTER = re.compile(r"^[(\[{]?\s*([A-Za-z])\s*[)\]}]?\s*(?:[.:)\-]|$|\s)")
_ANSWER_IS = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*[(\[]?([A-Z])\b[)\]]?", re.IGNORECASE)
DEFAULT_LETTERS = "ABCDEFGHIJ"


def option_letters(options: list[str] | tuple[str, ...] | None) -> str:
    """The letters of shown options ``["A. red", "B. blue"]`` -> ``"AB"`` (A-J when none are given)."""
    letters = ""
    for option in options or ():
        match = re.match(r"\s*\(?([A-Za-z])[.):]", option)
        if match:
            letters += match.group(1).upper()
    return letters or DEFAULT_LETTERS


def _unwrap_latex(text: str) -> str:
    """Drop ``$``, ``\\boxed{}`` and ``\\text{}`` wrappers around a short answer."""
    text = text.strip()
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    text = _TEXT_CMD.sub(r"\1", text)
    return text.replace("$", "").strip()


def extract_choice(answer_text: str | None, options: list[str] | tuple[str, ...] | None = None) -> str | None:
    """The option letter an answer picks, or None. Accepts ``B``, ``b``, ``(B)``, ``$B$``, ``\\boxed{B}``,
    ``B. text``, ``B) text``, "the answer is B" and the bare text of one option (``"blue"``).
    """
    if not answer_text:
        return None
    letters = option_letters(options)
    text = _unwrap_latex(answer_text[:2000])
    lead = _LEADING_LETTER.match(text)
    if lead and lead.group(1).upper() in letters:
        letter = lead.group(1)
        # A lower-case leading letter only counts alone ("a"), not as the article in "a red car".
        if letter.isupper() or len(re.sub(r"[()\[\]{}.:\s]", "", text)) == 1:
            return letter.upper()
    said = _ANSWER_IS.search(text)
    if said and said.group(1).upper() in letters:
        return said.group(1).upper()
    wanted = _normalise_words(text)
    for option in options or ():
        match = re.match(r"\s*\(?([A-Za-z])[.):]\s*(.*)", option, re.DOTALL)
        if match and wanted and _normalise_words(match.group(2)) == wanted:
            return match.group(1).upper()
    return None


def _normalise_words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# ---- numbers -------------------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+,\d{1,2}(?!\d)|\d*\.\d+|\d+)(?:[eE][-+]?\d{1,4})?(?:\s*/\s*\d+)?"
)
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip
_FRAC = re.compile(r"\\d?frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*(\d+(?:\.\d+)?)\s*\}")


def extract_number(text: str | None) -> float | None:
    """The first finite number in ``text``, or None.

    Reads ``1,000`` (thousands), ``1,5`` (decimal comma), ``-2``, ``1e3``, ``3/4``, ``\\frac{3}{4}``, ``$12$``,
    ``60 degrees`` and the words zero..twenty. Overflowing values (``1e999999``) give None.
    """
    if not text:
        return None
    text = _unwrap_latex(text[:10_000])
    frac = _FRAC.search(text)
    if frac:
        return _finite(float(frac.group(1)) / float(frac.group(2))) if float(frac.group(2)) else None
    match = _NUMBER.search(text)
    if match is None:
        word = text.strip().rstrip(".").lower()
        return float(_WORDS[word]) if word in _WORDS else None
    token = match.group(0).replace("\u2212", "-").replace(" ", "")
    numerator, _, denominator = token.partition("/")
    if re.fullmatch(r"[-+]?\d+,\d{1,2}", numerator):
        numerator = numerator.replace(",", ".")
    value = _to_float(numerator.replace(",", ""))
    if value is None:
        return None
    if denominator:
        den = _to_float(denominator)
        if not den:
            return None
        value /= den
    return _finite(value)


def _to_float(token: str) -> float | None:
    try:
        return float(token)
    except (ValueError, OverflowError):
        return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
