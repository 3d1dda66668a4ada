"""Fixtures for the rollout tests: a tiny Qwen2.5-VL, its byte tokenizer, and video prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_vl import byte_tokenizer, tiny_model, video_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer, model):
    """Three video questions of different lengths and video sizes (so batching needs left padding)."""
    return [
        video_prompt(tokenizer, model.config, "What moves? Answer in <answer></answer>.", frames=4, side=16, seed=1),
        video_prompt(tokenizer, model.config, "Count the dots.", frames=2, side=8, seed=2),
        video_prompt(tokenizer, model.config, "Which colour appears first, A or B?", frames=6, side=16, seed=3),
    ]
