"""The explicit processor: placeholder expansion matches the grids, mm_token_type_ids, second_per_grid_ts."""

from __future__ import annotations

import numpy as np
import pytest

from veripo.models.processor import VeripoProcessor


def test_video_placeholders_match_grid(policy, frames):
    processor = policy.processor
    inputs = processor("<|vision_start|><|video_pad|><|vision_end|>What moves?", videos=[frames], video_fps=4.0)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (3, 4, 6)
    n_video = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert n_video == t * h * w // 4 == 18
    assert inputs["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 14 * 14)
    assert inputs["mm_token_type_ids"].tolist()[0] == [2 if i == processor.video_token_id else 0
                                                       for i in inputs["input_ids"][0].tolist()]
    assert inputs["second_per_grid_ts"].tolist() == [0.5]  # temporal_patch_size / fps
    assert inputs["attention_mask"].shape == inputs["input_ids"].shape


def test_images_and_video_together(policy, frames):
    processor = policy.processor
    image = np.random.default_rng(5).integers(0, 256, (60, 90, 3), dtype=np.uint8)  # off-grid: smart-resized
    text = "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>Q"
    inputs = processor(text, images=[image], videos=[frames])
    ids = inputs["input_ids"][0]
    image_tokens = int(inputs["image_grid_thw"][0].prod()) // 4
    video_tokens = int(inputs["video_grid_thw"][0].prod()) // 4
    assert int((ids == processor.image_token_id).sum()) == image_tokens
    assert int((ids == processor.video_token_id).sum()) == video_tokens
    types = inputs["mm_token_type_ids"][0]
    assert int((types == 1).sum()) == image_tokens and int((types == 2).sum()) == video_tokens
    assert inputs["pixel_values"].shape[0] == int(inputs["image_grid_thw"][0].prod())
    # images come first in the text, so their placeholders precede the video's
    assert types.tolist().index(1) < types.tolist().index(2)


def test_count_mismatch_raises(policy, frames):
    with pytest.raises(ValueError, match="1 <\\|video_pad\\|> placeholders but 0 images and 2 videos"):
        policy.processor("<|video_pad|>", videos=[frames, frames])
    with pytest.raises(ValueError, match="video 0: .*multiples of 28"):
        policy.processor("<|video_pad|>", videos=[frames[:, :50]])
    with pytest.raises(ValueError, match="video_fps"):
        policy.processor("<|video_pad|>", videos=[frames], video_fps=[1.0, 2.0])


def test_qwen2_vl_has_no_second_per_grid_ts(policy, frames):
    processor = VeripoProcessor(policy.tokenizer, policy.processor.image_processor, model_type="qwen2_vl")
    assert "second_per_grid_ts" not in processor("<|video_pad|>", videos=[frames])


def test_save_and_load_round_trip(policy, tmp_path, frames):
    policy.processor.save_pretrained(tmp_path)
    loaded = VeripoProcessor.from_pretrained(tmp_path)
    assert loaded.video == policy.processor.video
    assert loaded.chat_template == policy.processor.chat_template
    a = policy.processor("<|video_pad|>x", videos=[frames])
    b = loaded("<|video_pad|>x", videos=[frames])
    assert all(bool((a[k] == b[k]).all()) for k in a)
