"""A GRPO stage with ``grpo.time_budget_s`` (what ``veripo demo --compare`` gives GRPO alone) stops after the
rollout batch that passes the budget, saves a final checkpoint and counts as done."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow


def test_time_budget_ends_the_stage_after_the_batch_that_passes_it(tmp_path: Path):
    data = make_synthetic(tmp_path / "data", n=8, seed=3, kinds=("text",))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu",
        "rollout.num_generations=2", "rollout.max_new_tokens=6", "grpo.lr=1e-4", "grpo.rollout_batch_size=2",
        "grpo.global_batch_size=4", "grpo.max_steps=10000", "grpo.time_budget_s=1e-6",
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="grpo", kind="grpo"),))
    root = run(cfg, show_progress=True).root

    stage = root / "stages" / "00-grpo"
    assert {r["rollout_batch"] for r in read_jsonl(stage / "metrics.jsonl")} == {0}  # one batch, not 10000
    assert len(read_jsonl(stage / "rollouts.jsonl")) == 2 * 2
    checkpoint = json.loads((stage / "latest.json").read_text())["checkpoint"]
    progress = json.loads((stage / "checkpoints" / checkpoint / "progress.json").read_text())
    assert progress["done"] is True and progress["unit"] == 1
    assert json.loads((root / "state.json").read_text())["completed"][0]["name"] == "grpo"
