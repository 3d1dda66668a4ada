"""Shared fixtures. Real third-party test material lives in ../shared/data (see its MANIFEST.md); tests
that need it skip with a message when it is absent (a user's clone has no ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VERIPO_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests run on 2 cores next to each other: one intra-op thread keeps them predictable.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder, or skip the test with a message when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"real test material not found at {SHARED_DATA} (set VERIPO_SHARED_DATA); skipping")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random Qwen2.5-VL of ``veripo model build-tiny`` (seed 0), built once per session (about 10 s:
    it trains its tokenizer). Every test folder shares it."""
    from veripo.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model") / "model", "tiny", seed=0)
