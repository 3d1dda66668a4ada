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


def test_round_trip_same_logits(family_policy, family, frames_for):
    # the same seed rebuilds the same weights in memory; the saved-and-loaded model must agree exactly
    from veripo.models.families import family_named

    policy = family_policy(family)
    config = tiny_config(SIZES["tiny"], policy.tokenizer, family=family)
    torch.manual_seed(0)
    fresh = family_named(family).model_class(config.model_type)(config).eval()
    assert type(fresh) is type(policy.model)
    sample = Sample(id="s", problem="What moves?", problem_type="free-form", answer="x", video="v.mp4")
    inputs = encode_prompt(policy, sample, frames=frames_for(policy), video_fps=2.0)
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


def test_seed_changes_weights(tiny_model_dir, tmp_path):
    from veripo.models.tiny import build_tiny

    other = load_policy(build_tiny(tmp_path / "seed1", "tiny", seed=1))
    first = load_policy(tiny_model_dir)
    name, weight = next(iter(first.model.state_dict().items()))
    assert not torch.equal(weight, other.model.state_dict()[name])


def test_dtype_option(tiny_model_dir):
    assert load_policy(tiny_model_dir, dtype="float64").model.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        load_policy(tiny_model_dir, dtype="int8")


def test_errors_name_directory_and_problem(tmp_path, tiny_model_dir):
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
    shutil.copytree(tiny_model_dir, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        load_policy(copy)


def test_qwen2_vl_directory_loads_and_samples(policy, tmp_path, frames):
    # a Qwen2-VL (first generation) checkpoint: same processor files, different model class and no
    # second_per_grid_ts in its inputs
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from veripo.models.generation import sample_responses
    from veripo.models.processor import VeripoProcessor

    tok = policy.tokenizer
    ids = policy.model.config
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids.image_token_id, video_token_id=ids.video_token_id,
        vision_start_token_id=ids.vision_start_token_id, vision_end_token_id=ids.vision_end_token_id,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)
    VeripoProcessor(tok, policy.processor.image_processor, model_type="qwen2_vl").save_pretrained(tmp_path)
    loaded = load_policy(tmp_path)
    assert type(loaded.model).__name__ == "Qwen2VLForConditionalGeneration"
    sample = Sample(id="s", problem="What moves?", problem_type="free-form", answer="x", video="v.mp4")
    inputs = encode_prompt(loaded, sample, frames=frames)
    assert "second_per_grid_ts" not in inputs
    assert len(sample_responses(loaded, inputs, 2, max_new_tokens=4, seed=0)) == 2


def test_the_configured_attention_kernel_is_the_one_loaded(tiny_model_dir):
    """model.attn_implementation reaches from_pretrained (it was read by nothing before)."""
    from veripo.models.loading import load_policy

    assert load_policy(tiny_model_dir, attn_implementation="eager").model.config._attn_implementation == "eager"
    assert load_policy(tiny_model_dir).model.config._attn_implementation != "eager"  # transformers' default: sdpa
