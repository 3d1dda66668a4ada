"""Reference sampling: vision special tokens are never sampled, seeded sampling is deterministic."""

from __future__ import annotations

import pytest
import torch

from veripo.data.records import Sample
from veripo.models.generation import sample_responses, vision_token_ids
from veripo.models.prompts import encode_prompt
from veripo.models.tokenizer import VISION_SPECIAL_TOKENS

SAMPLE = Sample(id="g", problem="Which way does it move?", problem_type="multiple choice", answer="A",
                options=["A. left", "B. right"], video="v.mp4")


@pytest.fixture()
def inputs(policy, frames):
    return encode_prompt(policy, SAMPLE, frames=frames[:4, :56, :56], video_fps=2.0)


def test_vision_token_ids(policy):
    ids = vision_token_ids(policy.tokenizer)
    assert ids == sorted(policy.tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS)))
    config = policy.model.config
    assert {config.video_token_id, config.image_token_id, config.vision_start_token_id} <= set(ids)


def test_seeded_sampling_is_deterministic(policy, inputs):
    first = sample_responses(policy, inputs, 3, max_new_tokens=16, seed=7)
    again = sample_responses(policy, inputs, 3, max_new_tokens=16, seed=7)
    other = sample_responses(policy, inputs, 3, max_new_tokens=16, seed=8)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]
    assert all(r.token_ids and (r.finished or len(r.token_ids) == 16) for r in first)


def test_global_rng_untouched(policy, inputs):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    sample_responses(policy, inputs, 1, max_new_tokens=2, seed=0)
    assert torch.equal(torch.rand(1), expected)


def test_vision_tokens_never_sampled(policy, inputs):
    # Make vision tokens the most likely continuation (+8 on their logits). Without suppression they are
    # sampled (negative control); with it, never, across many seeds.
    banned = vision_token_ids(policy.tokenizer)
    head = policy.model.lm_head

    def boost(module, args, output):
        output[..., banned] += 8.0
        return output

    handle = head.register_forward_hook(boost)
    try:
        with torch.no_grad():
            logits = policy.model(**inputs).logits[0, -1]
        assert int(logits.argmax()) in banned  # the control: unsuppressed, a vision token would win
        for seed in range(12):
            for response in sample_responses(policy, inputs, 4, max_new_tokens=8, seed=seed):
                assert not set(response.token_ids) & set(banned), (seed, response.token_ids)
    finally:
        handle.remove()


def test_greedy_and_input_checks(policy, inputs):
    a = sample_responses(policy, inputs, 2, max_new_tokens=8, temperature=0.0, seed=1)
    b = sample_responses(policy, inputs, 1, max_new_tokens=8, temperature=0.0, seed=2)
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        sample_responses(policy, without, 1)


def test_mm_token_type_ids_change_positions(policy, inputs):
    # transformers 5.23 falls back to 1-D positions without mm_token_type_ids (DESIGN.md); with them the
    # video tokens get 3-D M-RoPE positions, so the logits differ: our inputs must carry them
    with torch.no_grad():
        with_types = policy.model(**inputs).logits
        without = policy.model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(with_types, without, atol=1e-5)
