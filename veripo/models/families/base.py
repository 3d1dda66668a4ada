"""The ``ModelFamily`` interface: everything that differs between the Qwen vision-language generations.

Shared by every family here (the Qwen-VL layout): ``model.model.visual`` is the vision tower with its patch
merger, ``model.model.language_model.layers`` the decoder layers, ``model.model.get_rope_index`` the M-RoPE
positions of a prompt, ``model.lm_head`` the output head, and the processor's placeholders are
``<|image_pad|>`` / ``<|video_pad|>`` between ``<|vision_start|>`` and ``<|vision_end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"


@dataclass(frozen=True)
class ModelFamily:
    """One generation of Qwen vision-language models.

    Attributes:
        name: what users type (``veripo demo --family NAME``, ``model.family``).
        model_classes: config.json ``model_type`` -> transformers ``*ForConditionalGeneration`` class name.
        buildable: whether ``build_tiny`` can build a random one (``tiny_config`` is implemented).
        processor_class / video_processor_type: written into ``video_preprocessor_config.json`` so an install
            with torchvision loads our directories with ``AutoProcessor`` too.
        patch_size, image_mean, image_std: the released checkpoints' vision preprocessing (tiny models too).
        shared_prefix_exact: whether a prompt's KV cache alone carries everything the responses need
            (attention layers only). False: ``veripo.models.grouped_forward`` runs the per-sequence forward
            when asked for a shared prefix (exact, without the saving).
        shared_prefix_note: why, for the docs and ``veripo model info``.
    """

    name: str
    model_classes: Mapping[str, str]
    buildable: bool = True
    processor_class: str = ""
    video_processor_type: str = ""
    patch_size: int = 14
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    shared_prefix_exact: bool = True
    shared_prefix_note: str = "attention layers only: the prompt's KV cache is all its responses read"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.model_classes)

    def model_class(self, model_type: str) -> type:
        import transformers

        return getattr(transformers, self.model_classes[model_type])

    # --- processor -----------------------------------------------------------------------------------------
    def video_placeholder(self, grid_thw: Sequence[int], merge_size: int, fps: float, temporal_patch_size: int,
                          num_frames: int | None = None) -> str:
        """The text that replaces one video's ``<|video_pad|>`` (``<|vision_start|>`` ... ``<|vision_end|>``
        around it as the chat template wrote it) for ``num_frames`` frames sampled at ``fps``: Qwen2-VL's one
        block of ``t*h*w / merge**2`` pads."""
        t, h, w = (int(x) for x in grid_thw)
        return VIDEO_TOKEN * (t * h * w // merge_size**2)

    video_placeholder_replaces_wrapper = False  # True: the placeholder replaces start + pad + end

    def video_inputs(self, fps: Sequence[float], temporal_patch_size: int) -> dict[str, Any]:
        """Extra model inputs for the videos of one prompt (none by default)."""
        return {}

    # --- model ---------------------------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers (the units FSDP2 shards and gradient checkpointing wraps)."""
        return model.model.language_model.layers

    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The vision encoder with its patch merger(s): what ``model.freeze: [vision]`` freezes."""
        return model.model.visual

    def vision_features(self, model: nn.Module, modality: str, pixels: Any, grid_thw: Any) -> list[dict[str, Any]]:
        """Run the vision tower on the patch rows ``pixels`` of the items (images or videos) whose ``grid_thw``
        rows are given, as the model's own forward does; each item's outputs by name, in order. What
        ``veripo.models.vision_cache`` keeps, and ``encoder_outputs`` hands back to the model."""
        out = getattr(model.model, f"get_{modality}_features")(pixels, grid_thw, return_dict=True)
        return [{"pooler_output": merged} for merged in out.pooler_output]

    def encoder_outputs(self, items: Sequence[Mapping[str, Any]]) -> Any:
        """The model's ``mm_encoder_outputs[modality]`` for items of ``vision_features`` (in prompt order): what
        its forward reads instead of running the tower on pixels."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(item["pooler_output"] for item in items))

    def tiny_config(self, spec: Any, tokenizer: Any, *, patch_size: int | None = None) -> Any:
        """A transformers config of this family with ``spec``'s widths and ``tokenizer``'s special token ids."""
        raise NotImplementedError(f"{self.name}: no tiny model builder")


def special_ids(tokenizer: Any, names: Sequence[str]) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in names}


def mrope_sections(rotary_half: int, temporal_share: float = 0.25) -> list[int]:
    """Split a head's rotary half into temporal/height/width sections: Qwen2.5-VL-7B's [16, 24, 24] of 64 gives
    a quarter to time and shares the rest between height and width."""
    temporal = max(1, int(rotary_half * temporal_share))
    height = (rotary_half - temporal) // 2
    return [temporal, height, rotary_half - temporal - height]


def common_text_config(spec: Any, tokenizer: Any, ids: Mapping[str, int]) -> dict[str, Any]:
    """The text-model keys every family's tiny config shares (widths, vocabulary, Qwen's eos/pad ids)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def common_vision_config(spec: Any, patch_size: int) -> dict[str, Any]:
    """The vision-tower keys every family's tiny config shares (temporal patch 2, 2 x 2 merger, RGB)."""
    return dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden,
        patch_size=patch_size,
        temporal_patch_size=2,
        spatial_merge_size=2,
        in_channels=3,
    )


def vision_token_config(ids: Mapping[str, int]) -> dict[str, Any]:
    """The top-level placeholder ids of a Qwen-VL config."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)
