"""The plan's memory arithmetic against hand counts: states per strategy (compute dtype, fp32 masters, AdamW
moments), a layer's activations per token, and the logits bound."""

from __future__ import annotations

import dataclasses

import pytest

from veripo.models.footprint import ModelDims, activation_bytes, layer_bytes_per_token, state_bytes

# a made-up model: 1000 parameters, 600 of them in the decoder layers
DIMS = ModelDims(parameters=1000, vision_parameters=100, layer_parameters=600, hidden=8, intermediate=16, layers=2,
                 kv_width=4, q_width=8, vocab=10, vision_hidden=4, vision_intermediate=8, vision_depth=1,
                 patch_size=14, temporal_patch_size=2, merge_size=2)


@pytest.mark.parametrize("strategy, kw, expected", [
    # (weights, grads, masters, optimizer) in bytes. Autocast and FSDP2 mixed precision: the parameters are the
    # fp32 masters (4 bytes) and so are their gradients; the bf16 copies the forward makes (2 bytes); two fp32
    # moments (8 bytes)
    ("single", {}, (2000, 4000, 4000, 8000)),
    ("ddp", {}, (2000, 4000, 4000, 8000)),
    ("zero1", {}, (2000, 4000, 4000, 1000)),  # only the moments split over 8 ranks
    # FSDP2 over 8: the 600 layer parameters sharded (75 per rank), the other 400 whole
    ("fsdp2", {}, (2 * 475, 4 * 475, 4 * 475, 8 * 475)),
    # ... with ZeRO-1 as well: the other 400's moments split too (75 + 50)
    ("fsdp2", {"shard_optimizer": True}, (2 * 475, 4 * 475, 4 * 475, 8 * 125)),
    ("fsdp2", {"shard_group": 4}, (2 * 550, 4 * 550, 4 * 550, 8 * 550)),  # HSDP groups of 4
    # DeepSpeed ZeRO-3: bf16 weight and gradient partitions, fp32 master and moment partitions
    ("zero3", {}, (250, 250, 500, 1000)),
])
def test_states_per_strategy(strategy: str, kw: dict, expected: tuple[int, int, int, int]):
    s = state_bytes(DIMS, dtype="bfloat16", master_dtype="float32", world=8, strategy=strategy, **kw)
    assert (s.weights, s.grads, s.masters, s.optimizer) == expected
    assert s.total == sum(expected)


def test_pure_bf16_has_no_masters_and_bf16_moments():
    s = state_bytes(DIMS, dtype="bfloat16", master_dtype="bfloat16", world=1, strategy="single")
    assert (s.weights, s.grads, s.masters, s.optimizer) == (2000, 2000, 0, 4000)
    fp32 = state_bytes(DIMS, dtype="float32", master_dtype="float32", world=1, strategy="single")
    assert (fp32.weights, fp32.masters, fp32.optimizer) == (4000, 0, 8000)
    with pytest.raises(ValueError, match="unknown strategy 'tp'"):
        state_bytes(DIMS, dtype="float32", master_dtype="float32", world=1, strategy="tp")


def test_layer_bytes_per_token_by_hand():
    # Qwen2.5-VL-7B's decoder layer in bf16: 2 x (8 x 3584 + 4 x 512 + 4 x 18944) + 16 x 3584 (fp32 norms)
    assert layer_bytes_per_token(3584, 512, 18944, 2) == 2 * (28672 + 2048 + 75776) + 57344 == 270336


def test_activation_bytes_by_hand():
    # prompt 10 tokens (20 ViT patches), 3 responses of 5 tokens, fp32
    act = activation_bytes(DIMS, prompt_tokens=10, patches=20, rows=3, response_tokens=5, dtype="float32")
    text_layer = 4 * (8 * 8 + 4 * 4 + 4 * 16) + 16 * 8  # 704 bytes per token
    vision_block = 4 * (8 * 4 + 4 * 4 + 4 * 8) + 16 * 4  # 384
    per_layer = 25 * text_layer + 2 * 4 * (4 + 8) * 3 * (10 + 5)  # tokens + expanded prefix K/V
    logits = 4 * 4 * 15 * 10  # 4 float32 copies of 15 response tokens x vocab 10
    assert act.full == 2 * per_layer + 1 * 20 * vision_block + logits
    kept = 4 * (2 * 25 * 8 + 1 * 20 * 4)
    assert act.checkpointed == kept + 2 * max(per_layer, 20 * vision_block) + logits


def test_logits_are_bounded_by_the_chunking():
    from veripo.algos.logprobs import LOGITS_CHUNK_ELEMENTS

    big = dataclasses.replace(DIMS, vocab=152064)
    act = activation_bytes(big, prompt_tokens=0, patches=0, rows=64, response_tokens=4096, dtype="bfloat16")
    chunk = LOGITS_CHUNK_ELEMENTS // 152064 * 152064  # whole tokens per chunk
    no_logits = activation_bytes(dataclasses.replace(big, vocab=1), prompt_tokens=0, patches=0, rows=64,
                                 response_tokens=4096, dtype="bfloat16")
    assert act.full - (no_logits.full - 4 * 4 * 64 * 4096) == 4 * 4 * chunk
