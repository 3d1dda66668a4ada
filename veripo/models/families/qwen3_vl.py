"""Qwen3-VL (``qwen3_vl``, and its mixture-of-experts text model ``qwen3_vl_moe``): each frame of a video is its
own ``<{t:.1f} seconds><|vision_start|>`` + pads + ``<|vision_end|>`` block (``Qwen3VLProcessor.replace_video_token``,
which also collapses the chat template's outer start/end pair), and ``get_rope_index`` gives every frame its own
temporal position block; no ``second_per_grid_ts``. DeepStack adds vision-tower features to the first decoder
layers' hidden states at the vision positions, inside the prompt pass. Attention layers only, so a shared prompt
prefix is exact. Patch 16, mean/std 0.5 (transformers' ``Qwen3VLVideoProcessor``: IMAGENET_STANDARD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veripo.models.families.base import (
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    ModelFamily,
    common_text_config,
    common_vision_config,
    mrope_sections,
    special_ids,
    vision_token_config,
)
from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS


def frame_timestamps(num_frames: int, fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal patch: frame ``i`` is at ``i / fps``, the frame list is padded to a multiple of
    ``temporal_patch_size`` by repeating the last one, and each patch gets the mean of its first and last
    frame's time (``Qwen3VLProcessor._calculate_timestamps`` with ``frames_indices = range(num_frames)``)."""
    indices = list(range(num_frames))
    indices += [indices[-1]] * (-len(indices) % temporal_patch_size)
    times = [i / fps for i in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


@dataclass(frozen=True)
class Qwen3VLFamily(ModelFamily):
    video_placeholder_replaces_wrapper = True

    def video_placeholder(self, grid_thw: Sequence[int], merge_size: int, fps: float, temporal_patch_size: int,
                          num_frames: int | None = None) -> str:
        t, h, w = (int(x) for x in grid_thw)
        per_frame = VISION_START + VIDEO_TOKEN * (h * w // merge_size**2) + VISION_END
        times = frame_timestamps(num_frames or t * temporal_patch_size, fps, temporal_patch_size)
        return "".join(f"<{times[i]:.1f} seconds>" + per_frame for i in range(t))

    def vision_features(self, model: Any, modality: str, pixels: Any, grid_thw: Any) -> list[dict[str, Any]]:
        """The merged features and, per DeepStack layer, the features added to the first decoder layers."""
        out = getattr(model.model, f"get_{modality}_features")(pixels, grid_thw, return_dict=True)
        deepstack = out.deepstack_features or []
        return [{"pooler_output": merged, **{f"deepstack_{k}": layer[i] for k, layer in enumerate(deepstack)}}
                for i, merged in enumerate(out.pooler_output)]

    def encoder_outputs(self, items: Sequence[Mapping[str, Any]]) -> Any:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        layers = sum(name.startswith("deepstack_") for name in items[0]) if items else 0
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(item["pooler_output"] for item in items),
            deepstack_features=[tuple(item[f"deepstack_{k}"] for item in items) for k in range(layers)])

    def tiny_config(self, spec: Any, tokenizer: Any, *, patch_size: int | None = None) -> Any:
        from transformers import Qwen3VLConfig

        ids = special_ids(tokenizer, QWEN_SPECIAL_TOKENS)
        head_dim = spec.hidden // spec.heads
        return Qwen3VLConfig(
            text_config=dict(
                common_text_config(spec, tokenizer, ids),
                head_dim=head_dim,
                # Qwen3-VL-4B: [24, 20, 20] of 64, interleaved
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                 "mrope_section": mrope_sections(head_dim // 2, 0.375), "mrope_interleaved": True},
            ),
            vision_config=dict(
                common_vision_config(spec, patch_size or self.patch_size),
                num_position_embeddings=256,  # a learned 16 x 16 grid, interpolated (2304 = 48 x 48 released)
                deepstack_visual_indexes=list(range(min(2, spec.vision_depth))),
            ),
            **vision_token_config(ids),
        )


QWEN3_VL = Qwen3VLFamily(
    name="qwen3-vl",
    model_classes={"qwen3_vl": "Qwen3VLForConditionalGeneration",
                   "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"},
    processor_class="Qwen3VLProcessor",
    video_processor_type="Qwen3VLVideoProcessor",
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
)
