"""DAPO in a real GRPO stage on the tiny model: dynamic sampling refills the batch with more questions (counted
in the stage's state and summary), overlong shaping and filtering reach the rewards and the loss, and a stage
stopped mid-batch resumes to the same weights, rollouts and counters as an uninterrupted one."""

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


def varies(sample_id: str) -> bool:
    return int(sample_id.rsplit(":", 1)[-1]) % 3 == 0  # synthetic ids are "synthetic:N"


def digit_share_on_some(completion: str, sample) -> float:
    """Varies within the groups of a few questions only (by sample id), so dynamic sampling has work to do."""
    if not varies(sample.id):
        return 0.0
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.fixture(autouse=True)
def some_varying_reward():
    register_reward("test_digit_share_on_some")(digit_share_on_some)
    yield
    REWARDS.pop("test_digit_share_on_some", None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", n=9, seed=5, kinds=("image",), size=56)


def dapo_config(out: Path, data_dir: Path, *extra: str) -> RunConfig:
    cfg = load(RunConfig, None, [
        f"output_dir={out}", "model.build_tiny=tiny", "model.device=cpu", "media.max_pixels=3136",
        "rollout.num_generations=3", "rollout.max_new_tokens=10", "rewards.extra=[test_digit_share_on_some]",
        "rewards.weights={format: 0.0}", "grpo.rollout_batch_size=2", "grpo.global_batch_size=6",
        "grpo.max_steps=3", "grpo.lr=1e-3", "grpo.save_every=1", "grpo.dynamic_sampling=true",
        "grpo.max_resample_rounds=8", "grpo.overlong_buffer=4", *extra])
    return dataclasses.replace(cfg, data=(DataSource(path=str(data_dir)),), stages=(Stage(name="grpo", kind="grpo"),))


def _stage(root: Path) -> Path:
    return root / "stages" / "00-grpo"


def _final_weights(root: Path) -> dict[str, torch.Tensor]:
    stage = _stage(root)
    pointer = json.loads((stage / "latest.json").read_text())["checkpoint"]
    return load_file(stage / "checkpoints" / pointer / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    register_reward("test_digit_share_on_some")(digit_share_on_some)
    try:
        return run(dapo_config(tmp_path_factory.mktemp("clean"), data_dir), show_progress=False).root
    finally:
        REWARDS.pop("test_digit_share_on_some", None)


def test_dynamic_sampling_refills_and_counts_the_questions(uninterrupted):
    stage = _stage(uninterrupted)
    rows = read_jsonl(stage / "metrics.jsonl")
    rollouts = read_jsonl(stage / "rollouts.jsonl")
    summary = json.loads((uninterrupted / "summary.json").read_text())["stages"][0]
    drawn = sum(r["questions_drawn"] for r in {r["rollout_batch"]: r for r in rows}.values())
    assert summary["questions_drawn"] == drawn == len({r["id"].rsplit("/", 1)[0] for r in rollouts})
    assert summary["questions_resampled"] == drawn - 3 * 2 > 0 and summary["resample_rounds"] > 0
    assert len({r["id"] for r in rollouts}) == len(rollouts)  # a question drawn twice in a batch stays two groups
    trained = {r["sample_id"] for r in rollouts if r["advantage"] != 0.0}
    assert trained and all(varies(s) for s in trained)  # only varying groups train
    for row in rows:  # every step of a refilled batch holds rollout_batch_size kept groups
        assert row["groups_kept"] == 2.0
    assert all("overlong" in r["rewards"] for r in rollouts)
    for r in rollouts:  # DAPO's penalty over the last 4 of 10 tokens
        assert r["rewards"]["overlong"] == pytest.approx(min(0.0, -(r["response_tokens"] - 6) / 4))


def test_resampled_questions_count_toward_the_epochs(data_dir, tmp_path):
    """By epochs, a dynamic-sampling stage ends once it has drawn epochs x its questions, resampled ones included:
    9 questions in rollout batches of 2 would be 5 batches; resampling draws them sooner."""
    root = run(dapo_config(tmp_path, data_dir, "grpo.max_steps=null", "grpo.epochs=1"), show_progress=False).root
    rows = read_jsonl(_stage(root) / "metrics.jsonl")
    batches = {r["rollout_batch"]: r for r in rows}
    drawn = [sum(b["questions_drawn"] for u, b in batches.items() if u <= last) for last in sorted(batches)]
    summary = json.loads((root / "summary.json").read_text())["stages"][0]
    assert summary["questions_drawn"] == drawn[-1] >= 9 > drawn[-2]  # stopped at the batch that used the data
    assert len(batches) < 5


def test_the_overlong_filter_masks_truncated_responses(uninterrupted, data_dir, tmp_path):
    """The tiny model's responses run into max_new_tokens: without the filter they train, with it a step whose
    responses are all truncated has no token in its loss."""
    assert any(row["grad_norm"] > 0 for row in read_jsonl(_stage(uninterrupted) / "metrics.jsonl"))
    root = run(dapo_config(tmp_path, data_dir, "grpo.max_steps=1", "grpo.overlong_filter=true"),
               show_progress=False).root
    rollouts = read_jsonl(_stage(root) / "rollouts.jsonl")
    trained = [r for r in rollouts if r["advantage"] != 0.0]
    assert trained and all(r["truncated"] for r in trained), "the case needs truncated responses only"
    rows = read_jsonl(_stage(root) / "metrics.jsonl")
    assert rows and all(row["loss"] == 0.0 and row["grad_norm"] == 0.0 for row in rows)


def test_a_stopped_dapo_stage_resumes_exactly(uninterrupted, data_dir, tmp_path, monkeypatch):
    # stop in the batch after the first one that resampled: the resumed stage must continue the question stream
    # where that batch left it (rollout_batch_size x batches would be wrong), and count what it drew
    rows = read_jsonl(_stage(uninterrupted) / "metrics.jsonl")
    stop = 1 + min(r["rollout_batch"] for r in rows if r["questions_drawn"] > 2)
    assert stop <= 2, "the case needs a resampled batch before the last"
    original = grpo_recipe.GRPOStage.optimizer_step

    def stop_mid_batch(self, loop, groups, chunk):
        if loop.progress.unit == stop:  # after the previous batch's checkpoint, this batch's rollouts written
            raise KeyboardInterrupt("stopped")
        return original(self, loop, groups, chunk)

    monkeypatch.setattr(grpo_recipe.GRPOStage, "optimizer_step", stop_mid_batch)
    with pytest.raises(KeyboardInterrupt):
        run(dapo_config(tmp_path / "runs", data_dir), show_progress=False)
    root = next((tmp_path / "runs").iterdir())
    written = read_jsonl(_stage(root) / "rollouts.jsonl")
    monkeypatch.setattr(grpo_recipe.GRPOStage, "optimizer_step", original)
    resumed = run(None, resume=root, show_progress=False).root

    clean_rollouts = read_jsonl(_stage(uninterrupted) / "rollouts.jsonl")
    assert len(written) > len([r for r in clean_rollouts if r["step"] < stop])  # the stop left rows behind
    assert read_jsonl(_stage(resumed) / "rollouts.jsonl") == clean_rollouts
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(read_jsonl(_stage(resumed) / "metrics.jsonl")) == strip(read_jsonl(_stage(uninterrupted) / "metrics.jsonl"))
    a, b = _final_weights(uninterrupted), _final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary = lambda root: {k: v for k, v in json.loads((root / "summary.json").read_text())["stages"][0].items()  # noqa: E731
                            if k.startswith(("questions", "resample", "groups"))}
    assert summary(resumed) == summary(uninterrupted) and summary(resumed)["questions_drawn"] > 6
