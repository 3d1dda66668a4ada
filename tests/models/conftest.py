"""Fixtures for the model tests: one tiny model directory built per session, and its loaded policy."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from veripo.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


@pytest.fixture(scope="session")
def policy(tiny_dir):
    from veripo.models.loading import load_policy

    return load_policy(tiny_dir)


@pytest.fixture()
def frames() -> np.ndarray:
    """Six random (56, 84) RGB uint8 frames: grid (3, 4, 6), 18 video tokens."""
    return np.random.default_rng(0).integers(0, 256, (6, 56, 84, 3), dtype=np.uint8)
