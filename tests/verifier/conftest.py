"""Fixtures of the verifier tests: one random tiny causal LM (built offline) shared by the hf and openai judges."""

from __future__ import annotations

import pytest
from judge_servers import build_tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A random 1-layer Llama with the project's tiny tokenizer: it answers noise, never a verdict."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-judge"))
