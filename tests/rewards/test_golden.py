"""Every peer profile agrees with its peer's own output on every row of reward_goldens.jsonl."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from veripo.rewards import get_profile
from veripo.rewards.golden import (
    PEER_COLUMNS,
    expected_peer_value,
    inner_answer,
    sample_from_golden,
)

N_ROWS = 42


@functools.lru_cache(maxsize=1)
def _rows(shared_data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (shared_data / "golden" / "reward_goldens.jsonl").read_text().splitlines()]
    assert len(rows) == N_ROWS
    return rows


@pytest.mark.parametrize("profile", sorted(PEER_COLUMNS))
@pytest.mark.parametrize("row_index", range(N_ROWS))
def test_profile_matches_peer(shared_data: Path, profile: str, row_index: int) -> None:
    row = _rows(shared_data)[row_index]
    scores = get_profile(profile).score(row["completion"], sample_from_golden(row, row_index))
    for key, column in PEER_COLUMNS[profile].items():
        expected = expected_peer_value(row[column])
        assert scores[key] == pytest.approx(expected, abs=1e-12), (row["note"], key, column, row[column])


def test_peer_nulls_are_documented_zeroes(shared_data: Path) -> None:
    # The VerIPO scorer skips zero-gold / non-numeric regression items (null in the goldens): we give 0.
    nulls = [r for r in _rows(shared_data) if r["veripo_calculate_score"] is None]
    assert len(nulls) == 4
    profile = get_profile("veripo-eval")
    for i, row in enumerate(nulls):
        assert profile.score(row["completion"], sample_from_golden(row, i))["accuracy"] == 0.0


def test_inner_answer() -> None:
    assert inner_answer("<answer> 3.5 </answer>") == "3.5"
    assert inner_answer("B") == "B"
    assert inner_answer("<answer></answer>") == ""
