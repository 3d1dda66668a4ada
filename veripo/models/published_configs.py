"""The published dimensions of common checkpoints, as ``config.json``-shaped dicts, so ``veripo plan`` can size a
run (parameters, tokens, memory) where the checkpoint itself is not on disk. A model path is recognised by its
last component (``/models/Qwen2.5-VL-7B-Instruct`` -> ``Qwen2.5-VL-7B-Instruct``).

Sources: each model's ``config.json`` on the Hugging Face Hub (``huggingface.co/Qwen/<name>/blob/main/config.json``)
and its model card; what the configs omit takes transformers' defaults. Checked: building the model from these
dicts on the meta device gives exactly the parameter count published for the checkpoint
(``PUBLISHED_PARAMETERS``: the Hub's safetensors total, as found offline in public pages and code that queried or
loaded the checkpoint; tests/models/test_published_configs.py). Qwen2.5-VL-72B and Qwen3-VL-32B: no published
count was found offline, so their dimensions (from their config.json as we know it) are unverified here. The
Qwen3-VL MoE checkpoints (30B-A3B, 235B-A22B) are not included. Only the fields that shape the parameters and the
token arithmetic are kept (and the token ids).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

_QWEN25_TOKENS = {"bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
                  "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
                  "video_token_id": 151656}


def _qwen25_vl(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
               tie: bool) -> dict[str, Any]:
    # The vision tower (32 blocks of 1280, window attention with full attention every 8th block) is the same in
    # every Qwen2.5-VL size; only its merger's output width follows the language model.
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", **_QWEN25_TOKENS,
        "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "tie_word_embeddings": tie,
        "torch_dtype": "bfloat16", "vocab_size": vocab,
        "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                          "num_heads": 16, "in_chans": 3, "out_hidden_size": hidden, "patch_size": 14,
                          "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                          "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                          "temporal_patch_size": 2},
    }


def _qwen3_vl(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tie: bool,
              vision_depth: int, vision_hidden: int, vision_intermediate: int, deepstack: list[int]) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "tie_word_embeddings": tie,
        "text_config": {"model_type": "qwen3_vl_text", "attention_bias": False, "bos_token_id": 151643,
                        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": hidden,
                        "intermediate_size": intermediate, "max_position_embeddings": 262144,
                        "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
                        "rms_norm_eps": 1e-06, "rope_theta": 5000000,
                        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                         "rope_type": "default"},
                        "tie_word_embeddings": tie, "vocab_size": 151936, "dtype": "bfloat16"},
        "vision_config": {"model_type": "qwen3_vl", "deepstack_visual_indexes": deepstack, "depth": vision_depth,
                          "hidden_act": "gelu_pytorch_tanh", "hidden_size": vision_hidden, "in_channels": 3,
                          "intermediate_size": vision_intermediate, "num_heads": 16,
                          "num_position_embeddings": 2304, "out_hidden_size": hidden, "patch_size": 16,
                          "spatial_merge_size": 2, "temporal_patch_size": 2},
    }


PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen2.5-VL-3B-Instruct": _qwen25_vl(2048, 11008, 36, 16, 2, 151936, tie=True),
    "Qwen2.5-VL-7B-Instruct": _qwen25_vl(3584, 18944, 28, 28, 4, 152064, tie=False),
    "Qwen2.5-VL-72B-Instruct": _qwen25_vl(8192, 29568, 80, 64, 8, 152064, tie=False),
    "Qwen3-VL-2B-Instruct": _qwen3_vl(2048, 6144, 28, 16, 8, True, 24, 1024, 4096, [5, 11, 17]),
    "Qwen3-VL-4B-Instruct": _qwen3_vl(2560, 9728, 36, 32, 8, True, 24, 1024, 4096, [5, 11, 17]),
    "Qwen3-VL-8B-Instruct": _qwen3_vl(4096, 12288, 36, 32, 8, False, 27, 1152, 4304, [8, 16, 24]),
    "Qwen3-VL-32B-Instruct": _qwen3_vl(5120, 25600, 64, 64, 8, False, 27, 1152, 4304, [8, 16, 24]),
}

# Parameters published for a checkpoint (the Hub's safetensors total); None: no published count found offline.
PUBLISHED_PARAMETERS: dict[str, int | None] = {
    "Qwen2.5-VL-3B-Instruct": 3_754_622_976,
    "Qwen2.5-VL-7B-Instruct": 8_292_166_656,
    "Qwen2.5-VL-72B-Instruct": None,
    "Qwen3-VL-2B-Instruct": 2_127_532_032,
    "Qwen3-VL-4B-Instruct": 4_437_815_808,
    "Qwen3-VL-8B-Instruct": 8_767_123_696,
    "Qwen3-VL-32B-Instruct": None,
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def recognise(model_path: str | Path) -> str | None:
    """The published checkpoint a model path names by its last component (case and ``-``/``_`` ignored;
    ``-Thinking`` and a missing ``-Instruct`` name the same dimensions), or None."""
    last = _key(Path(str(model_path).rstrip("/")).name)
    last = last.replace("thinking", "instruct")
    for name in PUBLISHED_CONFIGS:
        key = _key(name)
        if last in (key, key.removesuffix("instruct")):
            return name
    return None


def published_config(name: str) -> dict[str, Any]:
    """A copy of the ``config.json``-shaped dict of checkpoint ``name`` (a key of ``PUBLISHED_CONFIGS``)."""
    if name not in PUBLISHED_CONFIGS:
        raise KeyError(f"no published dimensions for {name!r}; known: {', '.join(PUBLISHED_CONFIGS)}")
    return copy.deepcopy(PUBLISHED_CONFIGS[name])
