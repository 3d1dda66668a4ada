"""GRPO trains the policy that sampled its rollouts: at rollout temperature T the loss uses log-probs of
softmax(logits / T), as the engine reports them (TRL and verl do the same). On the first, on-policy step the
new and old log-probs then agree, so the logged KL to the sampler is zero; log-probs at temperature 1 would
not agree (negative control)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes import grpo as grpo_recipe
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow


def _first_step_kl(tmp_path: Path, name: str) -> float:
    data = make_synthetic(tmp_path / "data", n=4, seed=3, kinds=("text",))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / name}", "model.build_tiny=tiny", "model.device=cpu", "rollout.temperature=0.6",
        "rollout.num_generations=4", "rollout.max_new_tokens=8", "grpo.lr=1e-4", "grpo.rollout_batch_size=2",
        "grpo.global_batch_size=8", "grpo.max_steps=1",
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="grpo", kind="grpo"),))
    root = run(cfg, show_progress=False).root
    rows = [r for r in read_jsonl(root / "stages" / "00-grpo" / "metrics.jsonl") if "kl" in r]
    return rows[0]["kl"]


def test_first_step_is_on_policy_at_the_rollout_temperature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert abs(_first_step_kl(tmp_path, "scaled")) < 1e-4
    original = grpo_recipe.backward_group
    monkeypatch.setattr(grpo_recipe, "backward_group", lambda *a, **k: original(*a, **{**k, "temperature": 1.0}))
    assert abs(_first_step_kl(tmp_path, "unscaled")) > 1e-2
