"""GRPO's old log-probs: recomputed by the trainer (``grpo.recompute_old_logprobs``) or the sampler's, and the
sampler/trainer gap and clipped-token share every step logs.

A sampler that is not the trainer's own forward (another engine, other kernels or dtype) is simulated by
shifting every sampled log-prob by -0.3, so at a rollout batch's first step (the weights that sampled) the
trainer's log-prob exceeds the sampler's by exactly 0.3 on every token:
- with the sampler's log-probs the ratio is exp(0.3) = 1.35 > 1 + clip_high: the first step is off-policy, its
  logged KL to the old policy (mean old - new) is -0.3 and every token with a positive advantage is clipped;
- recomputed, the ratio is 1: KL 0 and nothing clipped;
- both runs log the gap |sampler - trainer| = 0.3, mean and max.
Without the shift, in float32 compute, the sampler is the trainer's forward to ~1e-6 ("auto" leaves it alone);
in bf16 compute "auto" recomputes (on this CPU the tiny model's bf16 decoding and teacher-forced pass happen to
round alike: gap measured 2e-8; GPU kernels for decoding and for a full pass differ).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes import grpo as grpo_recipe
from veripo.recipes.grpo import recomputes_old_logprobs
from veripo.recipes.veripo import run
from veripo.rewards.registry import REWARDS, register_reward

SHIFT = 0.3


@pytest.fixture
def digit_share_reward():
    """A reward untrained responses earn in varying amounts, so advantages are not all zero."""
    register_reward("test_old_logprobs_digit_share")(
        lambda completion, sample: sum(c.isdigit() for c in completion) / max(1, len(completion)))
    yield
    REWARDS.pop("test_old_logprobs_digit_share", None)


@pytest.fixture
def shifted_sampler(monkeypatch):
    original = grpo_recipe.sample_and_score

    def shifted(*args, **kwargs):
        groups = original(*args, **kwargs)
        for g in groups:
            g.logprobs = [[value - SHIFT for value in row] for row in g.logprobs]
        return groups

    monkeypatch.setattr(grpo_recipe, "sample_and_score", shifted)


def _first_step(tmp_path: Path, name: str, *overrides: str) -> dict:
    data = make_synthetic(tmp_path / "data", n=4, seed=3, kinds=("text",))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / name}", "model.build_tiny=tiny", "model.device=cpu", "rollout.num_generations=4",
        "rollout.max_new_tokens=8", "grpo.lr=1e-4", "grpo.rollout_batch_size=2", "grpo.global_batch_size=8",
        "grpo.max_steps=1", "grpo.clip_high=0.2", "rewards.extra=[test_old_logprobs_digit_share]", *overrides,
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="grpo", kind="grpo"),))
    root = run(cfg, show_progress=False).root
    rows = [r for r in read_jsonl(root / "stages" / "00-grpo" / "metrics.jsonl") if r.get("kind") == "grpo"]
    return rows[0]


@pytest.mark.slow
def test_recomputed_old_logprobs_undo_a_sampler_trainer_gap(tmp_path: Path, digit_share_reward, shifted_sampler):
    sampler = _first_step(tmp_path, "sampler", "grpo.recompute_old_logprobs=false")
    recomputed = _first_step(tmp_path, "recomputed", "grpo.recompute_old_logprobs=true")
    assert sampler["old_logprobs"] == "sampler" and recomputed["old_logprobs"] == "trainer"
    for row in (sampler, recomputed):
        assert row["logprob_gap_mean"] == pytest.approx(SHIFT, abs=1e-5)
        assert row["logprob_gap_max"] == pytest.approx(SHIFT, abs=1e-5)
    assert sampler["kl"] == pytest.approx(-SHIFT, abs=1e-5)  # mean(old - new): off-policy by the gap
    assert recomputed["kl"] == pytest.approx(0.0, abs=1e-6)
    assert sampler["clip_frac"] > 0.2 and recomputed["clip_frac"] == 0.0


@pytest.mark.slow
def test_bf16_compute_recomputes_by_default_and_float32_needs_not(tmp_path: Path, digit_share_reward):
    bf16 = _first_step(tmp_path, "bf16", "model.dtype=bfloat16", "model.master_dtype=float32")
    assert bf16["old_logprobs"] == "trainer" and bf16["kl"] == pytest.approx(0.0, abs=1e-6)
    fp32 = _first_step(tmp_path, "fp32")
    assert fp32["old_logprobs"] == "sampler" and fp32["logprob_gap_max"] < 1e-4


@pytest.mark.parametrize(("setting", "engine", "dtype", "expected"), [
    ("auto", "hf", "float32", False),  # the trainer's own forward in the same dtype
    ("auto", "hf", "bfloat16", True),
    ("auto", "vllm", "float32", True),  # another engine
    (True, "hf", "float32", True),
    (False, "hf", "bfloat16", False),
])
def test_auto_recomputes_unless_the_sampler_is_the_trainers_float32_forward(setting, engine, dtype, expected):
    assert recomputes_old_logprobs(setting, engine, dtype) is expected
