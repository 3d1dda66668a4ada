"""Fixtures for the evaluation tests: a scripted engine (no model), a whitespace tokenizer, and the tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scripted import ScriptedEngine, WordTokenizer


@pytest.fixture
def word_tokenizer() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture
def scripted_engine() -> type[ScriptedEngine]:
    return ScriptedEngine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL built once per session (about 10 s: it trains its tokenizer)."""
    from veripo.models import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-model") / "model", "tiny", seed=0)
