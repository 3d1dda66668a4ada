"""A run stopped in the middle of a GRPO stage that follows a finished stage, then resumed, continues the NEXT
training stage from the resumed stage's final weights (not from the weights of the stage finished before the
stop): its rollouts and final weights equal an uninterrupted run's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import veripo.recipes.grpo as grpo_recipe
from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run
from veripo.rewards.registry import REWARDS, register_reward

pytestmark = pytest.mark.slow

REWARD = "test_digit_share_next_stage"


def digit_share(completion: str, sample) -> float:
    """Varies within a group, so every GRPO step changes the weights."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.fixture(autouse=True)
def varying_reward():
    register_reward(REWARD)(digit_share)
    yield
    REWARDS.pop(REWARD, None)


def config(out: Path, data_dir: Path) -> RunConfig:
    cfg = load(RunConfig, None, [
        f"output_dir={out}", "model.build_tiny=tiny", "model.device=cpu", "media.max_pixels=3136",
        "rollout.num_generations=3", "rollout.max_new_tokens=10", f"rewards.extra=[{REWARD}]",
        "rewards.weights={format: 0.0}", "sft.batch_size=4", "sft.epochs=1", "sft.lr=3e-3",
        "grpo.rollout_batch_size=2", "grpo.global_batch_size=6", "grpo.max_steps=3", "grpo.lr=1e-3",
        "grpo.save_every=1", "iterations=0"])
    # SFT finishes before the stop: on resume it is a finished stage whose weights must not come back later
    return dataclasses.replace(cfg, data=(DataSource(path=str(data_dir)),), stages=(
        Stage(name="sft", kind="sft"), Stage(name="grpo", kind="grpo"), Stage(name="grpo2", kind="grpo")))


def _final_weights(stage: Path) -> dict[str, torch.Tensor]:
    pointer = json.loads((stage / "latest.json").read_text())["checkpoint"]
    return load_file(stage / "checkpoints" / pointer / "model.safetensors")


def test_the_stage_after_a_resumed_grpo_stage_starts_from_its_weights(tmp_path, monkeypatch):
    data_dir = make_synthetic(tmp_path / "data" / "synthetic", n=8, seed=5, kinds=("image",), size=56)
    clean = run(config(tmp_path / "clean", data_dir), show_progress=False).root

    original = grpo_recipe.GRPOStage.optimizer_step

    def stop_mid_stage(self, loop, groups, chunk):
        if self.ctx.stage.name == "grpo" and loop.progress.unit == 2:  # after unit 1's checkpoint
            raise KeyboardInterrupt("stopped")
        return original(self, loop, groups, chunk)

    monkeypatch.setattr(grpo_recipe.GRPOStage, "optimizer_step", stop_mid_stage)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "killed", data_dir), show_progress=False)
    monkeypatch.setattr(grpo_recipe.GRPOStage, "optimizer_step", original)
    resumed = run(None, resume=next((tmp_path / "killed").iterdir()), show_progress=False).root

    stages = ["00-sft", "01-grpo", "02-grpo2"]
    weights = {s: (_final_weights(clean / "stages" / s), _final_weights(resumed / "stages" / s)) for s in stages}
    a, b = weights["01-grpo"]
    assert any(not torch.equal(a[k], weights["00-sft"][0][k]) for k in a), "the case needs GRPO to move the weights"
    for stage in stages:
        a, b = weights[stage]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{stage}: final weights differ after the resume"
        if stage != "00-sft":
            assert read_jsonl(resumed / "stages" / stage / "rollouts.jsonl") == \
                read_jsonl(clean / "stages" / stage / "rollouts.jsonl"), f"{stage}: rollouts differ"
