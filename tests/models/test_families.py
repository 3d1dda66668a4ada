"""Model families behind one seam (``veripo.models.families``): the registry, Qwen3-VL's video placeholder
arithmetic against transformers' own ``Qwen3VLProcessor`` code, each family's processor output running through
its model, sampling, and Qwen3-VL-MoE on the same seam."""

from __future__ import annotations

from types import SimpleNamespace
from typing import get_args, get_type_hints

import pytest
import torch

from veripo.data.records import Sample
from veripo.models.families import FAMILIES, FAMILY_NAMES, family_named, family_of, family_of_type
from veripo.models.families.qwen3_vl import frame_timestamps
from veripo.models.generation import sample_responses, vision_token_ids
from veripo.models.prompts import encode_prompt

SAMPLE = Sample(id="f", problem="Which colour appears first?", problem_type="multiple choice", answer="A",
                options=["A. red", "B. blue"], images=["i.png"], video="v.mp4", data_type="video")


def test_config_names_the_buildable_families():
    from veripo.config.schema import ModelConfig

    assert set(get_args(get_type_hints(ModelConfig)["family"])) == set(FAMILY_NAMES)
    assert set(FAMILY_NAMES) == {"qwen2.5-vl", "qwen3-vl", "qwen3.5"}


def test_every_model_type_names_a_transformers_class():
    assert set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"}
    for model_type, family in FAMILIES.items():
        assert family.model_class(model_type).__name__.endswith("ForConditionalGeneration")


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"model_type 'llama' is not supported; expected one of \['qwen2_5_vl'"):
        family_of_type("llama")
    with pytest.raises(ValueError, match=r"unknown model family 'qwen4'; choose one of \['qwen2.5-vl', 'qwen3-vl'"):
        family_named("qwen4")


def transformers_replace_video_token(grid_thw, num_frames: int, fps: float) -> str:
    """transformers' ``Qwen3VLProcessor.replace_video_token`` (and its ``_calculate_timestamps``), run on a stand-in
    processor: the video's frames are ``range(num_frames)`` of a clip at ``fps`` (the frames veripo sampled)."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    stand_in = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                               vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                               video_token="<|video_pad|>")
    stand_in._calculate_timestamps = lambda *args: Qwen3VLProcessor._calculate_timestamps(stand_in, *args)
    metadata = VideoMetadata(total_num_frames=num_frames, fps=fps, frames_indices=list(range(num_frames)))
    inputs = {"video_grid_thw": torch.tensor([grid_thw]), "video_metadata": [metadata]}
    return Qwen3VLProcessor.replace_video_token(stand_in, inputs, 0)


@pytest.mark.parametrize("num_frames, fps, grid", [(4, 2.0, [2, 4, 6]), (5, 3.0, [3, 2, 2]), (8, 1.0, [4, 4, 4]),
                                                   (2, 0.7, [1, 6, 2])])
def test_qwen3_vl_video_placeholder_equals_transformers(num_frames, fps, grid):
    ours = family_named("qwen3-vl").video_placeholder(grid, 2, fps, 2, num_frames=num_frames)
    assert ours == transformers_replace_video_token(grid, num_frames, fps)
    assert ours.count("<|vision_start|>") == grid[0]
    assert ours.count("<|video_pad|>") == grid[0] * grid[1] * grid[2] // 4


def test_frame_timestamps_by_hand():
    # frames at 0, .5, 1, 1.5, 2 s; padded with the last (2 s); patches average their first and last frame
    assert frame_timestamps(5, 2.0, 2) == [0.25, 1.25, 2.0]
    assert frame_timestamps(4, 2.0, 2) != frame_timestamps(4, 1.0, 2)  # the frame rate reaches the text


def test_qwen2_5_vl_video_is_one_block_with_second_per_grid_ts(family_policy, frames_for):
    policy = family_policy("qwen2.5-vl")
    inputs = policy.processor("<|vision_start|><|video_pad|><|vision_end|>Q", videos=[frames_for(policy)[:4]],
                              video_fps=2.0)
    text = policy.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<|vision_start|>") == 1 and "seconds>" not in text
    assert inputs["second_per_grid_ts"].tolist() == [1.0]


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_qwen3_video_is_one_timestamped_block_per_frame(family_policy, frames_for, family):
    policy = family_policy(family)
    frames = frames_for(policy)[:4]
    inputs = policy.processor("<|vision_start|><|video_pad|><|vision_end|>Q", videos=[frames], video_fps=2.0)
    text = policy.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<0.2 seconds><|vision_start|>") and "<1.2 seconds><|vision_start|>" in text
    assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == 2  # the template's pair collapsed
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (2, 4, 6) and inputs["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 16 * 16)
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == t * h * w // 4
    assert "second_per_grid_ts" not in inputs


def test_every_family_reads_its_own_video_and_image(family_policy, family, frames_for):
    """Each family's processor output runs through its model (placeholders = features), and the video's pixels
    and its frame layout reach the logits; sampling never emits a vision token."""
    policy = family_policy(family)
    frames = frames_for(policy)[:4]
    image = frames_for(policy, seed=1)[0]
    inputs = encode_prompt(policy, SAMPLE, frames=frames, images=[image], video_fps=2.0)
    with torch.no_grad():
        logits = policy.model(**inputs).logits[0, -1]
        flipped = policy.model(**dict(inputs, pixel_values_videos=inputs["pixel_values_videos"].flip(0))).logits[0, -1]
    assert not torch.allclose(logits, flipped)
    responses = sample_responses(policy, inputs, 2, max_new_tokens=8, seed=3)
    banned = set(vision_token_ids(policy.tokenizer))
    assert all(r.token_ids and not banned & set(r.token_ids) for r in responses)


def test_vision_tower_and_decoder_layers_through_the_family(family_policy, family):
    policy = family_policy(family)
    kind = family_of(policy.model)
    assert kind.name == family and policy.processor.family is kind
    tower = {id(p) for p in kind.vision_tower(policy.model).parameters()}
    names = [n for n, p in policy.model.named_parameters() if id(p) in tower]
    assert names and all(".visual." in f".{n}" for n in names)  # merger (and DeepStack mergers) included
    assert len(kind.decoder_layers(policy.model)) == policy.model.config.text_config.num_hidden_layers


def test_qwen3_vl_moe_rides_the_qwen3_vl_seam():
    """A tiny Qwen3-VL-MoE (4 experts, 2 per token): family found by model_type; shared-prefix log-probs and
    gradients equal the per-sequence ones."""
    from transformers import Qwen3VLMoeConfig

    from veripo.models import grouped_forward as lp

    qwen3 = family_named("qwen3-vl")
    base = qwen3.tiny_config(SimpleNamespace(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                                             vision_hidden=32, vision_depth=2, vision_heads=2, vision_intermediate=64),
                             _SpecialIds(), patch_size=14).to_dict()
    text = {k: v for k, v in base["text_config"].items() if k in ("vocab_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "rope_parameters", "eos_token_id", "pad_token_id")}
    config = Qwen3VLMoeConfig(text_config=dict(text, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                               intermediate_size=128),
                              vision_config={k: v for k, v in base["vision_config"].items() if k != "model_type"},
                              image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
    torch.manual_seed(0)
    model = qwen3.model_class("qwen3_vl_moe")(config).float().train()
    assert family_of(model) is qwen3
    ids = [1, 7] + [t for f in range(2) for t in (30 + f, 252, 251, 251, 251, 251, 253)] + [11, 13]
    input_ids = torch.tensor([ids])
    prompt = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "pixel_values_videos": torch.randn(32, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0)),
              "video_grid_thw": torch.tensor([[2, 4, 4]]), "mm_token_type_ids": (input_ids == 251).long() * 2}
    response = torch.randint(20, 240, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 5)
    grads = {}
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        stats = lp.backward_group(model, prompt, response, mask, lambda logp, e, rows: -(logp * mask[rows]).sum(),
                                  shared_prefix=shared, micro_batch=2)
        grads[shared] = (stats.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[True][0].item() == pytest.approx(grads[False][0].item(), rel=1e-5)
    assert set(grads[True][1]) == set(grads[False][1])
    for name, expected in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][name], expected, rtol=1e-4, atol=1e-6, msg=name)


class _SpecialIds:
    IDS = {"<|endoftext|>": 0, "<|im_end|>": 2, "<|image_pad|>": 250, "<|video_pad|>": 251, "<|vision_start|>": 252,
           "<|vision_end|>": 253}

    def __len__(self) -> int:
        return 256

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.IDS.get(token, 3)
