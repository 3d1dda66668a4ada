"""Randomly initialised Qwen2.5-VL models small enough for a laptop, built offline and saved like a release.

The architecture is the real ``Qwen2_5_VLForConditionalGeneration`` (window-attention vision tower with
patch size 14, temporal patch 2, 2x2 patch merger, M-RoPE text model), only narrower and shallower, with a
locally trained byte-level BPE tokenizer (:mod:`veripo.models.tokenizer`). ``build_tiny`` writes a directory
that :func:`veripo.models.loading.load_policy` loads through ``from_pretrained`` like a 7B checkpoint.

Sizes (parameters, reported by ``veripo model info``): ``tiny`` about 1.4M, ``small`` about 25M.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS, train_tokenizer

TinySize = Literal["tiny", "small"]


@dataclass(frozen=True)
class TinySpec:
    """Widths and depths of one size. Text head_dim = hidden / heads; vision head_dim = vision_hidden / heads."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vocab_size: int = 1536


SIZES: dict[str, TinySpec] = {
    "tiny": TinySpec(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=352,
                     vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128),
    "small": TinySpec(hidden=384, layers=12, heads=6, kv_heads=2, intermediate=1024,
                      vision_hidden=256, vision_depth=4, vision_heads=4, vision_intermediate=512),
}


def tiny_config(spec: TinySpec, tokenizer, *, patch_size: int = 14):
    """A ``Qwen2_5_VLConfig`` for ``spec`` whose special token ids come from ``tokenizer`` (``patch_size``
    other than Qwen's 14 only for tests that want very small frames)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    half_head = spec.hidden // spec.heads // 2
    # M-RoPE splits each head's rotary half into temporal/height/width sections; Qwen2.5-VL-7B uses
    # [16, 24, 24] of 64, i.e. a quarter for time and the rest shared by height and width.
    temporal = half_head // 4
    height = (half_head - temporal) // 2
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=spec.hidden,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [temporal, height, half_head - temporal - height],
            },
            tie_word_embeddings=False,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.hidden,
            patch_size=patch_size,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=8 * patch_size,  # 112 px as in Qwen2.5-VL
            fullatt_block_indexes=list(range(1, spec.vision_depth, 2)),
            in_channels=3,
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        tie_word_embeddings=False,
    )


def build_tiny(out_dir: str | Path, size: TinySize = "tiny", seed: int = 0) -> Path:
    """Build a random Qwen2.5-VL of ``size`` and save model, tokenizer, processor configs and generation
    config to ``out_dir`` with ``save_pretrained``. Offline and deterministic: the same seed gives the same
    weights (``torch.manual_seed`` before construction; the tokenizer does not depend on the seed).

    Returns the directory. Raises ValueError for an unknown size.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from veripo.models.processor import VeripoProcessor

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(spec.vocab_size)
    config = tiny_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    ids = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=ids.bos_token_id,
        eos_token_id=[ids.eos_token_id, ids.pad_token_id],  # <|im_end|>, <|endoftext|> as Qwen2.5-VL-Instruct
        pad_token_id=ids.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    # Video frames are small here; the image processor keeps Qwen's defaults except a lower minimum so a
    # 56 px image is not upscaled to 3136 px^2.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=256 * 28 * 28)
    processor = VeripoProcessor(tokenizer, image_processor)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def count_parameters(model) -> dict[str, int]:
    """Parameter counts: total, vision tower, language model (incl. embeddings and lm_head)."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"total": total, "vision": vision, "language": total - vision}
