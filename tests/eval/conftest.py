"""Fixtures for the evaluation tests: a scripted engine (no model), and a whitespace tokenizer (the tiny model is the root conftest's)."""

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
