"""Video-R1's T-GRPO: the temporal bonus against a transcription of Video-R1's trainer, the shuffled-frame prompt
of the encoder, and a tiny-model GRPO stage that samples every video question a second time on shuffled frames
through the shared-prefix engine and pays the bonus to correct ordered responses."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import veripo.recipes.grpo as grpo_recipe
from veripo.config import DataSource, MediaConfig, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.media import load_video
from veripo.data.synthetic import make_synthetic
from veripo.models.inputs import SampleEncoder, shuffled_order
from veripo.models.prompts import encode_prompt
from veripo.recipes.veripo import run
from veripo.rewards.group import temporal_bonus
from veripo.rewards.profiles import ScoringProfile
from veripo.rewards.registry import REWARDS, register_reward
from veripo.rollout import HFRolloutEngine


def videor1_temporal(ordered_acc: list[float], shuffled_acc: list[float]) -> list[float]:
    """Video-R1's ``if self.temporal and video_inputs`` branch (src/r1-v/src/open_r1/trainer/grpo_trainer.py),
    transcribed for one question: what it adds to each ordered response's accuracy reward. In float64 (Video-R1's
    rewards are float32, which can decide an exact tie of the means the other way)."""
    temporal_rewards_per_func = torch.tensor(ordered_acc, dtype=torch.float64)[:, None].clone()
    acc_mean = temporal_rewards_per_func[:, 0].mean()
    shuffled_acc_mean = torch.tensor(shuffled_acc, dtype=torch.float64).mean()
    if acc_mean >= 0.8 * shuffled_acc_mean:
        mask = temporal_rewards_per_func[:, 0] > 0.1
        temporal_rewards_per_func[mask, 0] = temporal_rewards_per_func[mask, 0] + 0.3
    return (temporal_rewards_per_func[:, 0] - torch.tensor(ordered_acc, dtype=torch.float64)).tolist()


def test_temporal_bonus_is_videor1s_rule_on_random_groups():
    rng = random.Random(0)
    paid = withheld = 0
    for _ in range(500):
        ordered = [rng.choice([0.0, 0.1, 0.6, 1.0]) for _ in range(8)]
        shuffled = [rng.choice([0.0, 0.1, 0.6, 1.0]) for _ in range(4)]
        ours = temporal_bonus(ordered, shuffled, bonus=0.3, ratio=0.8, correct_threshold=0.1 + 1e-9)
        assert ours == pytest.approx(videor1_temporal(ordered, shuffled), abs=1e-6), (ordered, shuffled)
        paid += any(ours)
        withheld += not any(ours) and any(a > 0.1 for a in ordered)
    assert paid > 100 and withheld > 50  # both sides of the ratio test are exercised


def test_temporal_bonus_by_hand():
    # ordered accuracy 0.5 >= 0.8 x shuffled 0.5: the correct ordered response gains 0.3
    assert temporal_bonus([1.0, 0.0], [1.0, 0.0], correct_threshold=1.0) == [0.3, 0.0]
    # ordered 0.5 < 0.8 x 1.0: the model does as well without the order, no bonus
    assert temporal_bonus([1.0, 0.0], [1.0, 1.0], correct_threshold=1.0) == [0.0, 0.0]
    assert temporal_bonus([1.0, 0.0], [1.0, 1.0], ratio=0.5, bonus=0.2, correct_threshold=1.0) == [0.2, 0.0]
    assert temporal_bonus([1.0], [], correct_threshold=1.0) == [0.0]  # no shuffled rollouts: nothing to compare


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", n=4, seed=3, kinds=("video", "image"),
                          size=56, frames=(4, 4))


def test_the_shuffled_prompt_is_the_video_with_its_frames_permuted(tiny_model_dir, video_data, tmp_path):
    from veripo.models import load_policy

    policy = load_policy(tiny_model_dir, device="cpu")
    media = MediaConfig(max_frames=4, max_pixels=3136)
    encoder = SampleEncoder(policy.processor, media)
    sample = next(s for s in load_samples(video_data).samples if s.video is not None)
    video = load_video(sample.video, fps=media.fps, max_frames=4, min_frames=media.min_frames,
                       min_pixels=media.min_pixels, max_pixels=media.max_pixels)
    order = shuffled_order(len(video.frames), 11)
    assert sorted(order) == list(range(len(video.frames))) and order != sorted(order)
    expected = encode_prompt(policy.processor, sample, frames=video.frames[order], video_fps=video.fps)
    shuffled, ordered = encoder(sample, shuffle_seed=11), encoder(sample)
    assert torch.equal(shuffled["pixel_values_videos"], expected["pixel_values_videos"])
    assert torch.equal(shuffled["input_ids"], ordered["input_ids"])  # the same question, other frames
    assert not torch.equal(shuffled["pixel_values_videos"], ordered["pixel_values_videos"])
    assert encoder(sample, shuffle_seed=11) is shuffled  # memoised per order


def digit_share(completion: str, sample: object) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.mark.slow
def test_a_tgrpo_stage_samples_shuffled_frames_and_pays_the_bonus(tmp_path, video_data, monkeypatch):
    register_reward("test_digit_accuracy")(digit_share)
    try:
        # an "accuracy" an untrained model sometimes earns, so the bonus has correct responses to go to
        profile = ScoringProfile("digits", accuracy="test_digit_accuracy", format="format_lenient",
                                 correct_threshold=0.05)
        monkeypatch.setattr(grpo_recipe, "profile_for", lambda rewards: profile)
        calls = []
        generate = HFRolloutEngine.generate

        def spy(self, prompts, params, seeds=None):
            calls.append((len(prompts), params.num_generations, [p["input_ids"].shape[1] for p in prompts]))
            return generate(self, prompts, params, seeds=seeds)

        monkeypatch.setattr(HFRolloutEngine, "generate", spy)
        cfg = load(RunConfig, None, [
            f"output_dir={tmp_path}", "model.build_tiny=tiny", "model.device=cpu", "media.max_frames=4",
            "media.max_pixels=3136", "rollout.num_generations=4", "rollout.max_new_tokens=12",
            "rollout.batch_questions=4", "grpo.rollout_batch_size=4", "grpo.global_batch_size=16",
            "grpo.max_steps=2", "grpo.lr=1e-3", "grpo.temporal=true", "grpo.temporal_ratio=0.5"])
        cfg = dataclasses.replace(cfg, data=(DataSource(path=str(video_data)),), stages=(Stage(name="g", kind="grpo"),))
        root = run(cfg, show_progress=False).root
    finally:
        REWARDS.pop("test_digit_accuracy", None)
    # per rollout batch: the 4 questions with 4 responses each, then the 2 videos again, 2 responses each
    assert [(n, g) for n, g, _ in calls] == [(4, 4), (2, 2)] * 2
    stage = root / "stages" / "00-g"
    stats = read_jsonl(stage / "question_stats.jsonl")
    rollouts = read_jsonl(stage / "rollouts.jsonl")
    samples = {s.id: s for s in load_samples(video_data).samples}
    paid = 0
    for row in stats:
        mine = [r for r in rollouts if r["sample_id"] == row["sample_id"] and r["step"] == row["step"]]
        # "correct" (the easy-sample discard's input) counts by the profile's threshold, not accuracy 1.0
        assert row["correct"] == sum(r["rewards"]["accuracy"] >= 0.05 for r in mine)
        if samples[row["sample_id"]].video is None:
            assert "shuffled_accuracy_mean" not in row and all("temporal" not in r["rewards"] for r in mine)
            continue
        gate = row["accuracy_mean"] >= 0.5 * row["shuffled_accuracy_mean"]
        for r in mine:
            expected = 0.3 if gate and r["rewards"]["accuracy"] >= 0.05 else 0.0
            assert r["rewards"]["temporal"] == pytest.approx(expected)
            assert r["reward"] == pytest.approx(r["rewards"]["accuracy"] + r["rewards"]["format"] + expected)
            paid += expected > 0
    assert paid > 0, "no ordered response earned the bonus: the case does not exercise it"
    assert np.isfinite([row["loss"] for row in read_jsonl(stage / "metrics.jsonl")]).all()
