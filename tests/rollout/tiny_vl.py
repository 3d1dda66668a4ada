"""A self-contained tiny Qwen2.5-VL and byte-level tokenizer for the rollout tests.

Built in memory in well under a second, nothing downloaded. The tokenizer maps each byte to one token and
carries Qwen's special tokens, so `</answer>` is an ordinary 9-token string and every vision special token
has a real id the engine must learn from the config and the tokenizer.
"""

from __future__ import annotations

import torch

from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS as QWEN_SPECIALS


def byte_tokenizer():
    """A fast tokenizer with 256 byte tokens followed by Qwen's special tokens (ids 256..269)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, codes)))


def tiny_model(
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_depth: int = 2,
    patch_size: int = 4,
    seed: int = 0,
):
    """A randomly initialised Qwen2_5_VLForConditionalGeneration in fp32, eval mode (defaults: 81k params),
    configured by the models layer's ``tiny_config`` with these widths."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from veripo.models.tiny import TinySpec, tiny_config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    spec = TinySpec(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=hidden * 11 // 4,
                    vision_hidden=vision_hidden, vision_depth=vision_depth, vision_heads=max(2, vision_hidden // 64),
                    vision_intermediate=2 * vision_hidden)
    config = tiny_config(spec, tokenizer, patch_size=patch_size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def video_prompt(tokenizer, config, question: str, *, frames: int = 4, side: int = 16, seed: int = 0):
    """Batch-of-1 model inputs for a chat prompt holding one random video of `frames` frames at `side` px."""
    vc = config.vision_config
    grid_t, grid_h, grid_w = frames // vc.temporal_patch_size, side // vc.patch_size, side // vc.patch_size
    n_patches = grid_t * grid_h * grid_w
    n_video_tokens = n_patches // vc.spatial_merge_size**2
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n_patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2, generator=gen)
    text = (
        "<|im_start|>user\n<|vision_start|>" + "<|video_pad|>" * n_video_tokens + "<|vision_end|>"
        + question + "<|im_end|>\n<|im_start|>assistant\n"
    )
    input_ids = torch.tensor([tokenizer(text)["input_ids"]])
    mm_token_type_ids = (input_ids == config.video_token_id).long() * 2
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
        "mm_token_type_ids": mm_token_type_ids,
    }


def tiny_qwen2_vl(tokenizer, *, hidden: int = 32, seed: int = 0):
    """A randomly initialised Qwen2VLForConditionalGeneration (the Qwen2-VL generation) in fp32."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def image_prompt(tokenizer, config, question: str, *, side: int = 16, seed: int = 0):
    """Batch-of-1 model inputs for a chat prompt holding one random image of `side` px."""
    vc = config.vision_config
    grid_h = grid_w = side // vc.patch_size
    n_patches = grid_h * grid_w
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n_patches, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2, generator=gen)
    text = (
        "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * (n_patches // vc.spatial_merge_size**2)
        + "<|vision_end|>" + question + "<|im_end|>\n<|im_start|>assistant\n"
    )
    input_ids = torch.tensor([tokenizer(text)["input_ids"]])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixels,
        "image_grid_thw": torch.tensor([[1, grid_h, grid_w]]),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
    }
