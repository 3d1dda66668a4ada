"""What a Qwen-VL model costs before anything is loaded: exact parameter counts from the model built on the meta
device from its ``config.json``, visual tokens through the data pipeline's own resize and frame arithmetic
(``veripo.data.media``), and the memory of one training micro-batch (``veripo plan`` adds them up per stage).

The activation model counts what autograd keeps for backward in transformers' Qwen2.5-VL / Qwen3-VL layers, per
token, per layer (compute dtype ``b`` bytes, RMSNorm's float32 upcasts at 4 bytes):

- decoder layer: the two RMSNorms (their float32 input and normalised copy, and the weighted output), q/k/v and
  their rotary copies, the attention output and the o_proj input, the MLP's gate, up, act(gate) and product:
  ``b * (8h + 4kv + 4i) + 16h`` bytes per token (h: hidden, kv: key/value width, i: MLP width);
- attention of the response rows over the shared prompt: each row's keys and values over ``P + R`` positions
  (the prompt's K/V expanded to the row and concatenated with its own, then repeated to all heads for
  grouped-query attention): ``2b * (kv + h) * (P + R)`` per row and layer;
- vision blocks the same way with the vision widths over the ViT patches (4 per visual token);
- log-probs: float32 logits, their log-softmax/softmax and the gradient, of the response tokens, in the chunks
  ``veripo.algos.logprobs`` bounds (``LOGITS_CHUNK_ELEMENTS``).

With gradient checkpointing a layer keeps only its input (``b*h`` per token); during one layer's backward its
recomputed activations and their gradients are live (twice the largest layer's activations). Tested against the resident-memory peak of a real training step of the 22.5M
"small" Qwen2.5-VL on CPU (tests/models/test_footprint_on_cpu.py): within 30%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_COPIES = 4  # float32 logits, log-softmax / softmax and their gradient, live together in a chunk


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` (or a model folder holding one) as a dict; ValueError names the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the model config: {e}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{path}: not a transformers config.json (no model_type)")
    return data


def meta_model(config: dict[str, Any]) -> Any:
    """The model of ``config`` (a ``config.json`` dict) built on the meta device: every parameter has its real
    shape and no memory (transformers' ``from_config`` under ``torch.device("meta")``)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    fields = dict(config)
    model_type = fields.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(hf_config)


@dataclass(frozen=True)
class ModelDims:
    """The widths and counts the plan needs, read from a model built on the meta device."""

    parameters: int
    vision_parameters: int
    layer_parameters: int  # in the decoder layers (what FSDP2 shards; the rest stays whole)
    hidden: int
    intermediate: int
    layers: int
    kv_width: int  # key/value heads x head dim
    q_width: int  # attention heads x head dim
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> ModelDims:
        model = meta_model(config)
        text, vision = model.config.text_config, model.config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        layers = model.model.language_model.layers
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            vision_parameters=sum(p.numel() for p in model.model.visual.parameters()),
            layer_parameters=sum(p.numel() for p in layers.parameters()),
            hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers,
            kv_width=text.num_key_value_heads * head_dim, q_width=text.num_attention_heads * head_dim,
            vocab=text.vocab_size, vision_hidden=vision.hidden_size, vision_intermediate=vision.intermediate_size,
            vision_depth=vision.depth, patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size)


@dataclass(frozen=True)
class VisualCost:
    """One question's visual input: tokens in the language model, patches in the vision tower, and how."""

    tokens: int
    patches: int
    detail: str  # e.g. "32 frames of 224x224"


def video_cost(dims: ModelDims, *, frames: int, height: int, width: int, min_pixels: int,
               max_pixels: int) -> VisualCost:
    """A video of ``frames`` sampled frames (``veripo.data.media.count_sampled_frames``) from a ``width`` x
    ``height`` source, resized as the data pipeline resizes video frames."""
    from veripo.data.media import smart_resize, video_frame_budget

    factor = dims.patch_size * dims.merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels,
                        max_pixels=video_frame_budget(frames, min_pixels, max_pixels))
    grid_t = -(-frames // dims.temporal_patch_size)
    patches = grid_t * (h // dims.patch_size) * (w // dims.patch_size)
    return VisualCost(patches // dims.merge_size**2, patches, f"{frames} frames of {w}x{h}")


def image_cost(dims: ModelDims, *, height: int, width: int, min_pixels: int, max_pixels: int) -> VisualCost:
    """One image, resized as the data pipeline resizes images (one temporal patch)."""
    from veripo.data.media import smart_resize

    h, w = smart_resize(height, width, factor=dims.patch_size * dims.merge_size, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    patches = (h // dims.patch_size) * (w // dims.patch_size)
    return VisualCost(patches // dims.merge_size**2, patches, f"1 image of {w}x{h}")


def layer_bytes_per_token(hidden: int, kv: int, intermediate: int, b: int) -> int:
    """What one transformer layer keeps for backward per token (see the module docstring)."""
    return b * (8 * hidden + 4 * kv + 4 * intermediate) + 16 * hidden


@dataclass(frozen=True)
class Activations:
    """Bytes of one forward/backward's activations, without and with gradient checkpointing."""

    full: int
    checkpointed: int


def activation_bytes(dims: ModelDims, *, prompt_tokens: int, patches: int, rows: int, response_tokens: int,
                     dtype: str) -> Activations:
    """One micro-batch: a prompt of ``prompt_tokens`` (visual tokens included, ``patches`` ViT patches) run
    once, and ``rows`` responses of ``response_tokens`` against it (``veripo.models.grouped_forward``)."""
    from veripo.algos.logprobs import LOGITS_CHUNK_ELEMENTS

    b = DTYPE_BYTES[dtype]
    tokens = prompt_tokens + rows * response_tokens
    text_layer = layer_bytes_per_token(dims.hidden, dims.kv_width, dims.intermediate, b)
    vision_block = layer_bytes_per_token(dims.vision_hidden, dims.vision_hidden, dims.vision_intermediate, b)
    # each response row attends over the prompt and itself: its expanded and head-repeated keys and values
    prefix_kv = 2 * b * (dims.kv_width + dims.q_width) * rows * (prompt_tokens + response_tokens)
    per_layer = tokens * text_layer + prefix_kv
    vision = patches * vision_block
    logits = LOGITS_COPIES * 4 * min(rows * response_tokens * dims.vocab,
                                     max(dims.vocab, LOGITS_CHUNK_ELEMENTS // dims.vocab * dims.vocab))
    full = dims.layers * per_layer + dims.vision_depth * vision + logits
    # checkpointed: every layer's input kept; in a layer's backward its recomputed activations and their
    # gradients are live together (the largest layer: twice its activations)
    kept = b * (dims.layers * tokens * dims.hidden + dims.vision_depth * patches * dims.vision_hidden)
    checkpointed = kept + 2 * max(per_layer, vision) + logits
    return Activations(full=full, checkpointed=checkpointed)


@dataclass(frozen=True)
class StateBytes:
    """Per-rank bytes that live through a whole stage: weights, gradients, fp32 master copy, optimizer."""

    weights: int
    grads: int
    masters: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.masters + self.optimizer


def state_bytes(dims: ModelDims, *, dtype: str, master_dtype: str, world: int, strategy: str,
                shard_group: int | None = None, shard_optimizer: bool = False) -> StateBytes:
    """Per-rank states as veripo's strategies hold them (``veripo.parallel.precision``). Pure training
    (``master_dtype == dtype``): weights and gradients in ``dtype``, no masters. Mixed precision under autocast
    (single, ddp, zero1) and FSDP2's ``MixedPrecisionPolicy``: the parameters are the ``master_dtype`` masters and
    so are their gradients; ``weights`` counts the compute-dtype copies the forward makes (an upper bound for
    FSDP2, which gathers them a layer at a time). DeepSpeed ZeRO-3 (``zero3``): compute-dtype weights and
    gradients with master partitions beside them. AdamW's two moments are in ``master_dtype``. ``strategy``: ``single`` or ``ddp`` (all whole), ``zero1`` (masters and
    moments split over ``world``), ``fsdp2`` (decoder layers split over ``shard_group`` ranks, the rest whole,
    its masters and moments split over ``world`` with ``shard_optimizer``), ``zero3`` (all split)."""
    b, m = DTYPE_BYTES[dtype], DTYPE_BYTES[master_dtype]
    total, layers = dims.parameters, dims.layer_parameters
    if strategy in ("single", "ddp"):
        held, opt_held = total, total
    elif strategy == "zero1":
        held, opt_held = total, total / world
    elif strategy == "fsdp2":
        group = shard_group or world
        held = (total - layers) + layers / group
        opt_held = layers / group + (total - layers) / (world if shard_optimizer else 1)
    elif strategy == "zero3":
        held, opt_held = total / world, total / world
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    if master_dtype == dtype or strategy == "zero3":
        grads, masters = b * held, (m * opt_held if master_dtype != dtype else 0)
    else:
        grads, masters = m * held, m * held
    return StateBytes(weights=round(b * held), grads=round(grads), masters=round(masters),
                      optimizer=round(2 * m * opt_held))
