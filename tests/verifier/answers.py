"""Answers for verifier tests built on synthetic questions."""

from __future__ import annotations

from veripo.data.records import Sample


def a_different_answer(sample: Sample) -> str:
    """A wrong answer of the same type: another option's letter, the number plus one, another digit, or a
    phrase sharing no content word with the synthetic free-form answers."""
    if sample.options:
        return next(o for o in sample.options if not o.startswith(sample.answer))[0]
    if sample.problem_type == "OCR":
        return str((int(sample.answer) + 1) % 10)
    if sample.problem_type in ("numerical", "regression", "math"):
        return str(float(sample.answer) + 1)
    return "nothing happened"
