"""Logit processing matches transformers' processors; special-token discovery; stop-string checks."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from veripo.rollout.sampling import (
    apply_repetition_penalty,
    completes_stop_string,
    end_of_text_ids,
    next_token_distribution,
    top_p_filter,
    vision_token_ids,
)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_filter_matches_transformers(top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    expected = TopPLogitsWarper(top_p=top_p)(torch.zeros(6, 1, dtype=torch.long), logits.clone())
    assert torch.equal(top_p_filter(logits, top_p), expected)


def test_top_p_one_keeps_everything_and_tiny_top_p_keeps_the_argmax():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    kept = top_p_filter(logits, 1e-6)
    assert torch.isfinite(kept).tolist() == [[False, True, False]]


def test_repetition_penalty_matches_transformers():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=gen)
    input_ids = torch.randint(0, 40, (3, 12), generator=gen)
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, input_ids, True)
    expected = RepetitionPenaltyLogitsProcessor(penalty=1.3)(input_ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), expected)


def test_repetition_penalty_hand_values():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0]]


def test_banned_tokens_get_no_probability_even_when_most_likely():
    logits = torch.tensor([[5.0, 1.0, 0.0]])
    banned = torch.tensor([True, False, False])
    out = next_token_distribution(logits, banned=banned, seen=None, repetition_penalty=1.0, temperature=0.5, top_p=0.9)
    assert out.softmax(-1)[0, 0] == 0
    assert out[0, 1] == 2.0  # temperature applied: 1.0 / 0.5


def test_vision_and_end_ids_come_from_config_and_tokenizer(tokenizer, model):
    names = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    assert vision_token_ids(model.config, tokenizer) == sorted(tokenizer.convert_tokens_to_ids(names))
    ends = end_of_text_ids(model.generation_config, tokenizer)
    assert ends == sorted(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_completes_stop_string():
    assert completes_stop_string("B</answer>", ["</answer>"])
    assert not completes_stop_string("B</answer", ["</answer>"])
    assert not completes_stop_string("anything", [])
