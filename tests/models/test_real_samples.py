"""End to end on real Video-R1 rows (../shared/data): decoded media -> prompt -> tiny-model generation."""

from __future__ import annotations

import pytest

from veripo.models.generation import sample_responses, vision_token_ids
from veripo.models.prompts import encode_prompt


@pytest.fixture(scope="module")
def real_samples(shared_data):
    from veripo.data.loaders import load_samples

    return load_samples(shared_data / "real" / "videor1_samples" / "sample_data.json").samples


@pytest.mark.parametrize("problem_type", ["multiple choice", "numerical", "OCR", "regression"])
def test_real_sample_prompts_and_generation(policy, real_samples, problem_type):
    from veripo.data.media import load_image, load_video

    sample = next(s for s in real_samples if s.problem_type == problem_type)
    frames = fps = None
    if sample.video:
        # small settings keep the test fast; the layout is the same at any size
        video = load_video(sample.video, fps=1.0, max_frames=4, min_frames=2, min_pixels=28 * 28,
                           max_pixels=56 * 84)
        frames, fps = video.frames, video.fps
    images = [load_image(p, min_pixels=28 * 28, max_pixels=84 * 84) for p in sample.images]
    inputs = encode_prompt(policy, sample, frames=frames, images=images, video_fps=fps, style="videor1")
    text = policy.tokenizer.decode(inputs["input_ids"][0])
    assert sample.problem in text or sample.problem.replace("\n", "") in text.replace("\n", "")
    for key, kind in (("video_grid_thw", 2), ("image_grid_thw", 1)):
        if key in inputs:
            expected = int(inputs[key].prod(-1).sum()) // 4
            assert int((inputs["mm_token_type_ids"] == kind).sum()) == expected
    responses = sample_responses(policy, inputs, 2, max_new_tokens=6, seed=0)
    assert all(not set(r.token_ids) & set(vision_token_ids(policy.tokenizer)) for r in responses)
