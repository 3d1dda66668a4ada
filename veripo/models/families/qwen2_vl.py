"""Qwen2-VL and Qwen2.5-VL: one block of ``<|video_pad|>`` per video; Qwen2.5-VL adds ``second_per_grid_ts``
(temporal M-RoPE positions in absolute time, ``Qwen2_5_VLProcessor._process_videos``); attention layers only,
so a shared prompt prefix is exact. Patch 14, CLIP mean/std, window-attention vision tower (Qwen2.5-VL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veripo.models.families.base import (
    ModelFamily,
    common_text_config,
    common_vision_config,
    mrope_sections,
    special_ids,
    vision_token_config,
)
from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS


@dataclass(frozen=True)
class Qwen2VLFamily(ModelFamily):
    pass


@dataclass(frozen=True)
class Qwen25VLFamily(ModelFamily):
    def video_inputs(self, fps: Sequence[float], temporal_patch_size: int) -> dict[str, Any]:
        import torch

        return {"second_per_grid_ts": torch.tensor([temporal_patch_size / f for f in fps])}

    def tiny_config(self, spec: Any, tokenizer: Any, *, patch_size: int | None = None) -> Any:
        from transformers import Qwen2_5_VLConfig

        patch_size = patch_size or self.patch_size
        ids = special_ids(tokenizer, QWEN_SPECIAL_TOKENS)
        return Qwen2_5_VLConfig(
            text_config=dict(
                common_text_config(spec, tokenizer, ids),
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                 "mrope_section": mrope_sections(spec.hidden // spec.heads // 2)},
            ),
            vision_config=dict(
                common_vision_config(spec, patch_size),
                window_size=8 * patch_size,  # 112 px as in Qwen2.5-VL
                fullatt_block_indexes=list(range(1, spec.vision_depth, 2)),
                tokens_per_second=2,
            ),
            vision_token_id=ids["<|vision_pad|>"],
            **vision_token_config(ids),
        )


QWEN2_5_VL = Qwen25VLFamily(
    name="qwen2.5-vl",
    model_classes={"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"},
    processor_class="Qwen2_5_VLProcessor",
    video_processor_type="Qwen2VLVideoProcessor",
)
QWEN2_VL = Qwen2VLFamily(
    name="qwen2-vl",
    model_classes={"qwen2_vl": "Qwen2VLForConditionalGeneration"},
    buildable=False,
    processor_class="Qwen2VLProcessor",
    video_processor_type="Qwen2VLVideoProcessor",
)
