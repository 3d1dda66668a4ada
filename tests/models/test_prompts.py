"""Prompt building: Video-R1's exact text, VerIPO's answer format, the chat template and media parts."""

from __future__ import annotations

import numpy as np
import pytest

from veripo.data.records import Sample
from veripo.models.prompts import (
    build_messages,
    encode_prompt,
    veripo_prompt,
    videor1_prompt,
)

MC = Sample(id="mc", problem="Which direction does the red square move?", problem_type="multiple choice",
            answer="B", options=["A. left", "B. right"], video="v.mp4", data_type="video")
NUM = Sample(id="num", problem="How many dots appear?", problem_type="numerical", answer="3")


def test_videor1_multiple_choice_text():
    # Video-R1 grpo.py: problem + "Options:\n" + options, QUESTION_TEMPLATE, then TYPE_TEMPLATE
    text = videor1_prompt(MC)
    assert text.startswith("Which direction does the red square move?Options:\nA. left\nB. right\n\n"
                           "Please think about this question as if you were a human pondering deeply. ")
    assert text.endswith("give your final answer between the <answer> </answer> tags. Please provide only the "
                         "single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.")


def test_videor1_numerical_suffix():
    assert videor1_prompt(NUM).endswith(" Please provide the numerical value (e.g., 42 or 3.14) within the "
                                        "<answer> </answer> tags.")


def test_veripo_answer_format_and_numeric_variant():
    mc, num = veripo_prompt(MC), veripo_prompt(NUM)
    assert mc.startswith("Which direction does the red square move?\nA. left\nB. right\n")
    assert "<think> reasoning process here </think><answer> $X$ </answer>" in mc
    assert "must be a number" in num and "must be a number" not in mc


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown prompt style 'cot'"):
        build_messages(MC, n_images=0, has_video=True, style="cot")


def test_encode_prompt_through_chat_template(policy, frames):
    inputs = encode_prompt(policy, MC, frames=frames, video_fps=2.0, style="videor1")
    text = policy.tokenizer.decode(inputs["input_ids"][0])
    n_video = int((inputs["input_ids"] == policy.processor.video_token_id).sum())
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|>" + "<|video_pad|>" * n_video + "<|vision_end|>Which direction")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert n_video == int(inputs["video_grid_thw"].prod()) // 4
    assert set(inputs) >= {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos",
                           "video_grid_thw", "second_per_grid_ts"}


def test_encode_prompt_with_images(policy):
    sample = Sample(id="img", problem="What colour?", problem_type="free-form", answer="red",
                    images=["a.png", "b.png"], data_type="image")
    images = [np.full((56, 56, 3), 200, np.uint8), np.zeros((84, 56, 3), np.uint8)]
    inputs = encode_prompt(policy, sample, images=images)
    assert inputs["image_grid_thw"].shape == (2, 3)
    assert int((inputs["mm_token_type_ids"] == 1).sum()) == int(inputs["image_grid_thw"].prod(-1).sum()) // 4


def test_encode_prompt_media_mismatch(policy, frames):
    with pytest.raises(ValueError, match="sample 'mc': video='v.mp4' but frames were not given"):
        encode_prompt(policy, MC)
    with pytest.raises(ValueError, match="sample 'num': video=None but frames were given"):
        encode_prompt(policy, NUM, frames=frames)
    image_sample = Sample(id="i", problem="Q", problem_type="free-form", answer="a", images=["a.png"])
    with pytest.raises(ValueError, match="lists 1 images, 0 given"):
        encode_prompt(policy, image_sample)
