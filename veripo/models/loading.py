"""Load a policy (model + processor + tokenizer) from a local model directory of a family in
``veripo.models.families`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5).

Uses the real ``from_pretrained`` path of transformers, so a released checkpoint and a directory written by
:func:`veripo.models.tiny.build_tiny` load the same way. Nothing is downloaded: the path must exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veripo.errors import UserError
from veripo.models.families import FAMILIES, family_of_type
from veripo.models.adapters import add_saved_adapters, is_adapter_folder, read_adapter_config
from veripo.models.processor import VeripoProcessor


class ModelError(UserError, ValueError):
    """A model directory that cannot be loaded: the message names the path and what is missing."""


_DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class Policy:
    """A loaded policy. ``model`` is in eval mode on ``device``; ``processor`` builds its inputs."""

    model: Any
    processor: VeripoProcessor
    tokenizer: Any
    path: Path


def read_model_type(path: str | Path) -> str:
    """The ``model_type`` of a model directory's config.json.

    Raises ValueError naming the directory and what is missing or unsupported.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a directory (expected a local model directory)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: no config.json, so this is not a model directory "
                         f"(build one with `veripo model build-tiny {path}`)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{config_file}: not valid JSON ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise ModelError(f"{config_file}: model_type {model_type!r} is not supported; "
                         f"expected one of {sorted(FAMILIES)}")
    return model_type


def load_policy(path: str | Path, *, dtype: str = "float32", device: str = "cpu",
                attn_implementation: str | None = None) -> Policy:
    """Load model, processor and tokenizer from ``path``.

    Args:
        path: a local directory with config.json, weights, tokenizer files and preprocessor_config.json.
        dtype: one of float32, bfloat16, float16, float64.
        device: a torch device string ("cpu", "cuda", "cuda:1").
        attn_implementation: transformers' attention kernel (eager, sdpa, flash_attention_2); None: its default.
    Raises:
        ValueError: the directory is missing, is not a model of a supported family, lacks weights, tokenizer
            or preprocessor files, or ``dtype`` is unknown; the message names the directory and the file.
    """
    import torch

    path = Path(path)
    if dtype not in _DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported; choose one of {list(_DTYPES)}")
    if path.is_dir() and is_adapter_folder(path) and not (path / "config.json").exists():
        return _load_adapted_policy(path, dtype=dtype, device=device, attn_implementation=attn_implementation)
    model_type = read_model_type(path)
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path}: no weights (*.safetensors or *.bin) next to config.json")
    for required, what in (("preprocessor_config.json", "the image processor config"),
                           ("tokenizer_config.json", "the tokenizer")):
        if not (path / required).is_file():
            raise ModelError(f"{path}: missing {required} ({what})")
    model_class = family_of_type(model_type).model_class(model_type)
    kernel = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = model_class.from_pretrained(path, dtype=getattr(torch, dtype), **kernel).to(device).eval()
    processor = VeripoProcessor.from_pretrained(path, model_type=model_type)
    return Policy(model=model, processor=processor, tokenizer=processor.tokenizer, path=path)


def _load_adapted_policy(path: Path, **load: Any) -> Policy:
    """A LoRA checkpoint (adapters only): its base model (``base_model_name_or_path`` of adapter_config.json)
    with the adapters on."""
    base = read_adapter_config(path).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ModelError(f"{path / 'adapter_config.json'}: base_model_name_or_path {base!r} is not a local model "
                         "directory; load the base model and add the adapters, or `veripo export` the run")
    policy = load_policy(base, **load)
    add_saved_adapters(policy.model, path)
    policy.model.eval()
    return policy
