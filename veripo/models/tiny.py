"""Randomly initialised Qwen vision-language models small enough for a laptop, built offline and saved like a
release: Qwen2.5-VL (the default), Qwen3-VL and Qwen3.5 (``family``; ``veripo.models.families``).

The architecture is the real transformers class (for Qwen2.5-VL ``Qwen2_5_VLForConditionalGeneration``:
window-attention vision tower with patch size 14, temporal patch 2, 2x2 patch merger, M-RoPE text model;
Qwen3-VL and Qwen3.5 with patch 16 and DeepStack, Qwen3.5 with linear-attention layers), only narrower and shallower, with a
locally trained byte-level BPE tokenizer (:mod:`veripo.models.tokenizer`). ``build_tiny`` writes a directory
that :func:`veripo.models.loading.load_policy` loads through ``from_pretrained`` like a 7B checkpoint.

Sizes (parameters, reported by ``veripo model info``): ``tiny`` about 1.4M, ``small`` about 25M.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from veripo.models.tokenizer import train_tokenizer

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


def tiny_config(spec: TinySpec, tokenizer, *, patch_size: int | None = None, family: str = "qwen2.5-vl"):
    """The transformers config of ``family``'s tiny model for ``spec``, special token ids from ``tokenizer``
    (``patch_size`` other than the family's only for tests that want very small frames)."""
    from veripo.models.families import family_named

    return family_named(family).tiny_config(spec, tokenizer, patch_size=patch_size)


def build_tiny(out_dir: str | Path, size: TinySize = "tiny", seed: int = 0, family: str = "qwen2.5-vl") -> Path:
    """Build a random model of ``family`` (``veripo.models.families.FAMILY_NAMES``) and ``size`` and save model, tokenizer, processor configs and generation
    config to ``out_dir`` with ``save_pretrained``. Offline and deterministic: the same seed gives the same
    weights (``torch.manual_seed`` before construction; the tokenizer does not depend on the seed).

    Returns the directory. Raises ValueError for an unknown size or family.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from veripo.models.families import family_named
    from veripo.models.processor import VeripoProcessor, VideoSettings

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    kind = family_named(family)
    spec = SIZES[size]
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(spec.vocab_size)
    config = kind.tiny_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = kind.model_class(config.model_type)(config).eval()
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
    # Video frames are small here; the image processor keeps the family's defaults except a lower minimum so
    # a 56 px image is not upscaled to 3136 px^2.
    factor = kind.patch_size * 2
    image_processor = Qwen2VLImageProcessorPil(patch_size=kind.patch_size, image_mean=list(kind.image_mean),
                                               image_std=list(kind.image_std), min_pixels=factor * factor,
                                               max_pixels=256 * factor * factor)
    video = VideoSettings(patch_size=kind.patch_size, image_mean=kind.image_mean, image_std=kind.image_std)
    processor = VeripoProcessor(tokenizer, image_processor, video, model_type=config.model_type)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def count_parameters(model) -> dict[str, int]:
    """Parameter counts: total, vision tower, language model (incl. embeddings and lm_head)."""
    total = sum(p.numel() for p in model.parameters())
    from veripo.models.families import family_of

    vision = sum(p.numel() for p in family_of(model).vision_tower(model).parameters())
    return {"total": total, "vision": vision, "language": total - vision}
