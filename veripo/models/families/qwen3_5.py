"""Qwen3.5 (``qwen3_5``): Qwen3-VL's vision side (per-frame timestamps, patch 16, mean/std 0.5) with a hybrid
text model: three of every four decoder layers are Gated DeltaNet linear attention, whose state after the
prompt is a recurrent state and a convolution window, not keys and values. ``veripo.models.grouped_forward``'s
shared prefix hands responses the prompt's keys and values only, so for this family it falls back to the
per-sequence forward (prompt and response together, exact, no saving), and the rollout engine prefills each
prompt G times (transformers' ``LinearAttentionLayer`` cannot be repeated along the batch)."""

from __future__ import annotations

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
from veripo.models.families.qwen3_vl import Qwen3VLFamily
from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS

PARTIAL_ROTARY = 0.25  # Qwen3.5: a quarter of each head's dimensions rotate


def layer_types(layers: int) -> list[str]:
    """Three linear-attention layers, then one full-attention layer, repeated (as released); the last layer is
    full attention in any case, so even a 2-layer test model has both kinds."""
    return ["full_attention" if (i + 1) % 4 == 0 or i == layers - 1 else "linear_attention" for i in range(layers)]


@dataclass(frozen=True)
class Qwen35Family(Qwen3VLFamily):
    # Qwen3-VL's vision side without DeepStack: the tower's merged features are all its forward reads
    vision_features = ModelFamily.vision_features
    encoder_outputs = ModelFamily.encoder_outputs

    def tiny_config(self, spec: Any, tokenizer: Any, *, patch_size: int | None = None) -> Any:
        from transformers import Qwen3_5Config

        ids = special_ids(tokenizer, QWEN_SPECIAL_TOKENS)
        head_dim = spec.hidden // spec.heads
        linear_heads = max(1, spec.kv_heads)
        return Qwen3_5Config(
            text_config=dict(
                common_text_config(spec, tokenizer, ids),
                head_dim=head_dim,
                # linear attention: as many key heads as kv heads, twice as many value heads (16 / 32 released)
                linear_num_key_heads=linear_heads,
                linear_num_value_heads=2 * linear_heads,
                linear_key_head_dim=head_dim // 2,
                linear_value_head_dim=head_dim // 2,
                linear_conv_kernel_dim=4,
                layer_types=layer_types(spec.layers),
                rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                 "partial_rotary_factor": PARTIAL_ROTARY,
                                 "mrope_section": mrope_sections(int(head_dim * PARTIAL_ROTARY) // 2, 0.375),
                                 "mrope_interleaved": True},
            ),
            vision_config=dict(common_vision_config(spec, patch_size or self.patch_size), num_position_embeddings=256),
            **vision_token_config(ids),
        )


QWEN3_5 = Qwen35Family(
    name="qwen3.5",
    model_classes={"qwen3_5": "Qwen3_5ForConditionalGeneration"},
    processor_class="Qwen3VLProcessor",
    video_processor_type="Qwen3VLVideoProcessor",
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    shared_prefix_exact=False,
    shared_prefix_note="linear-attention layers carry a recurrent state, not keys and values: the training "
                       "forward falls back to per-sequence (exact); rollouts prefill each of the G copies",
)
