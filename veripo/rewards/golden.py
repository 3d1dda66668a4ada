"""Adapter from a peer-golden row (``reward_goldens.jsonl``) to a :class:`Sample`, and the column each
profile must agree with."""

from __future__ import annotations

from typing import Any

from veripo.data.records import Sample

# profile -> {score key: golden column}
PEER_COLUMNS: dict[str, dict[str, str]] = {
    "videor1-train": {"accuracy": "videor1_train_accuracy", "format": "videor1_format"},
    "videor1-eval": {"accuracy": "videor1_eval_reward", "total": "videor1_eval_reward"},
    "veripo-eval": {"accuracy": "veripo_calculate_score", "total": "veripo_calculate_score"},
}


def inner_answer(solution: str) -> str:
    """``"<answer> X </answer>"`` -> ``"X"`` (a solution without tags is returned stripped)."""
    text = solution.strip()
    start = text.find("<answer>")
    end = text.rfind("</answer>")
    if start >= 0 and end > start:
        return text[start + 8 : end].strip()
    return text


def sample_from_golden(row: dict[str, Any], index: int = 0) -> Sample:
    """A golden row keyed by Video-R1's ``solution`` string as a Sample with the bare gold answer."""
    return Sample(
        id=f"golden-{index}",
        problem=row.get("note", ""),
        problem_type=row["problem_type"],
        answer=inner_answer(row["solution"]),
        options=list(row.get("options") or []),
    )


def expected_peer_value(value: Any) -> float:
    """A peer's golden output as the number we return: None (the peer skipped the item) or ``EXC:...`` (it
    raised) count as 0.0, which is what such an item adds to the peer's accuracy."""
    if value is None or (isinstance(value, str) and value.startswith("EXC")):
        return 0.0
    return float(value)
