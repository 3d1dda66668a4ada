"""The ``make_run`` fixture: synthetic run directories from synthetic_runs.py (a module of its own, so that test
files import it by a name no other test folder's conftest shares)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic_runs import GRPO_ONLY_STAGES, VERIPO_STAGES, build_run


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    """``make_run(name, kind="veripo"|"grpo-only", seed=0)`` builds a run directory in tmp_path."""

    def make(name: str = "veripo-20261123-210000", kind: str = "veripo", seed: int = 0) -> Path:
        return build_run(tmp_path / name, VERIPO_STAGES if kind == "veripo" else GRPO_ONLY_STAGES, seed)

    return make
