"""The prefill-once engine on every model family (Qwen2.5-VL, Qwen3-VL, Qwen3.5): greedy decoding equals
transformers' ``generate``, the returned log-probs equal a teacher-forced forward, and questions batched with left
padding give what they give alone. For Qwen3.5 this holds through transformers' own cache, which carries the
linear-attention layers' recurrent and convolution states through ``batch_repeat_interleave`` / ``batch_select_indices``."""

from __future__ import annotations

import pytest
import torch
from test_hf_engine import greedy, hf_greedy, sampled, teacher_forced_logprobs
from tiny_vl import video_prompt

from veripo.models.families import family_named
from veripo.models.tiny import TinySpec
from veripo.rollout import HFRolloutEngine

FAMILIES = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tokenizer):
    kind = family_named(request.param)
    spec = TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=88, vision_hidden=32, vision_depth=2,
                    vision_heads=2, vision_intermediate=64)
    config = kind.tiny_config(spec, tokenizer, patch_size=4)
    torch.manual_seed(0)
    model = kind.model_class(config.model_type)(config).eval()
    model.generation_config.eos_token_id = [config.text_config.eos_token_id, config.text_config.pad_token_id]
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return kind, model


def family_video_prompt(kind, tokenizer, config, question, *, frames, side, seed):
    """``tiny_vl.video_prompt``'s inputs with the family's video text (Qwen3: a timestamped block per frame)."""
    prompt = video_prompt(tokenizer, config, question, frames=frames, side=side, seed=seed)
    vc = config.vision_config
    grid = prompt["video_grid_thw"][0].tolist()
    video = kind.video_placeholder(grid, vc.spatial_merge_size, 2.0, vc.temporal_patch_size, num_frames=frames)
    if kind.video_placeholder_replaces_wrapper:
        text = "<|im_start|>user\n" + video + question + "<|im_end|>\n<|im_start|>assistant\n"
        input_ids = torch.tensor([tokenizer(text)["input_ids"]])
        prompt.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                      mm_token_type_ids=(input_ids == config.video_token_id).long() * 2)
    return prompt


@pytest.fixture(scope="module")
def family_prompts(family_model, tokenizer):
    kind, model = family_model
    return [family_video_prompt(kind, tokenizer, model.config, q, frames=f, side=s, seed=i)
            for i, (q, f, s) in enumerate([("What moves? Answer in <answer></answer>.", 4, 16),
                                           ("Count the dots.", 2, 8), ("Which colour appears first, A or B?", 6, 16)])]


def test_greedy_equals_generate_and_logprobs_equal_teacher_forcing(family_model, family_prompts, tokenizer):
    _, model = family_model
    engine = HFRolloutEngine(model, tokenizer)
    for prompt in family_prompts:
        group = engine.generate([prompt], greedy(16))[0]
        expected = hf_greedy(model, prompt, engine, 16)
        for response in group.responses:
            assert response.token_ids == expected
            torch.testing.assert_close(torch.tensor(response.logprobs),
                                       teacher_forced_logprobs(model, prompt, response.token_ids), atol=1e-4, rtol=0)


def test_batched_questions_match_one_at_a_time(family_model, family_prompts, tokenizer):
    _, model = family_model
    engine = HFRolloutEngine(model, tokenizer)
    params = sampled(seed=5, G=3, max_new_tokens=12)
    seeds = [11, 12, 13]
    together = engine.generate(family_prompts, params, seeds=seeds)
    for prompt, seed, group in zip(family_prompts, seeds, together):
        alone = engine.generate([prompt], params, seeds=[seed])[0]
        assert [r.token_ids for r in group.responses] == [r.token_ids for r in alone.responses]
        for a, b in zip(group.responses, alone.responses):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
