"""load_policy: the real from_pretrained path, same logits after a save/load round trip, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from veripo.data.records import Sample
from veripo.models.loading import load_policy
from veripo.models.prompts import encode_prompt
from veripo.models.tiny import SIZES, count_parameters, tiny_config


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_round_trip_same_logits(policy, frames):
    # the same seed rebuilds the same weights in memory; the saved-and-loaded model must agree exactly
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    fresh = Qwen2_5_VLForConditionalGeneration(tiny_config(SIZES["tiny"], policy.tokenizer)).eval()
    sample = Sample(id="s", problem="What moves?", problem_type="free-form", answer="x", video="v.mp4")
    inputs = encode_prompt(policy, sample, frames=frames, video_fps=2.0)
    loaded = _logits(policy.model, inputs)
    assert loaded.shape == (1, inputs["input_ids"].shape[1], len(policy.tokenizer))
    torch.testing.assert_close(loaded, _logits(fresh, inputs), rtol=0, atol=0)
    # and the video matters (M-RoPE + vision features reach the logits)
    other = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"].flip(0))
    assert not torch.allclose(_logits(policy.model, other), loaded)


def test_tiny_size_and_config(policy):
    counts = count_parameters(policy.model)
    assert 1_000_000 <= counts["total"] <= 2_000_000
    vision = policy.model.config.vision_config
    assert (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) == (14, 2, 2)
    assert policy.model.generation_config.eos_token_id == [policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id]
    assert not policy.model.training


def test_seed_changes_weights(tiny_dir, tmp_path):
    from veripo.models.tiny import build_tiny

    other = load_policy(build_tiny(tmp_path / "seed1", "tiny", seed=1))
    first = load_policy(tiny_dir)
    name, weight = next(iter(first.model.state_dict().items()))
    assert not torch.equal(weight, other.model.state_dict()[name])


def test_dtype_option(tiny_dir):
    assert load_policy(tiny_dir, dtype="float64").model.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        load_policy(tiny_dir, dtype="int8")


def test_errors_name_directory_and_problem(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match=f"{tmp_path}: no config.json"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load_policy(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama' is not supported"):
        load_policy(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        load_policy(copy)
