"""The config keys of the RL algorithms (issue 24) are validated where they are read: finite, in range, the
key's path in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from veripo.config import ConfigError, RunConfig, load


@pytest.mark.parametrize(("override", "key"), [
    ("grpo.clip_low=-0.1", "grpo.clip_low"),
    ("grpo.clip_low=1.5", "grpo.clip_low"),
    ("grpo.clip_high=.nan", "grpo.clip_high"),
    ("grpo.dual_clip=0.9", "grpo.dual_clip"),
    ("grpo.max_resample_rounds=-1", "grpo.max_resample_rounds"),
    ("grpo.overlong_buffer=-4", "grpo.overlong_buffer"),
    ("grpo.overlong_buffer=9999", "grpo.overlong_buffer"),
    ("grpo.overlong_penalty=.inf", "grpo.overlong_penalty"),
    ("grpo.temporal_bonus=-0.3", "grpo.temporal_bonus"),
    ("grpo.temporal_ratio=0", "grpo.temporal_ratio"),
    ("grpo.temporal_generations=0", "grpo.temporal_generations"),
    ("verifier.correct_threshold=2", "verifier.correct_threshold"),
    ("rewards.correct_threshold=0", "rewards.correct_threshold"),
    ("rewards.correct_threshold=1.5", "rewards.correct_threshold"),
    ("rewards.weights.accuracy=.nan", "rewards.weights.accuracy"),
    ("rewards.format=gated", "rewards.format"),
    ("rewards.length.min_tokens=600", "rewards.length.min_tokens"),
    ("rewards.length.min_correct=0", "rewards.length.min_correct"),
    ("rewards.length.bonus=.inf", "rewards.length.bonus"),
    ("rewards.length.count=words", "rewards.length.count"),
])
def test_bad_algorithm_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, [override])
    assert f"'{key}'" in str(e.value), str(e.value)


def test_a_stage_override_is_checked_with_its_path(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - {name: g, kind: grpo, grpo: {overlong_buffer: 100000}}\n")
    with pytest.raises(ConfigError) as e:
        load(RunConfig, path)
    assert "stages[0].grpo.overlong_buffer" in str(e.value)


def test_good_values_load():
    cfg = load(RunConfig, None, ["grpo.policy_loss=gspo", "grpo.clip_low=3e-4", "grpo.dynamic_sampling=true",
                                 "grpo.overlong_buffer=64", "rewards.format=gate", "rewards.length.bonus=0.2",
                                 "rewards.correct_threshold=0.5"])
    assert cfg.grpo.clip_low == 3e-4 and cfg.rewards.length.bonus == 0.2 and cfg.rewards.format == "gate"
