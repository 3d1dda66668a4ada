"""LoRA adapters (through ``peft``) and frozen parts of a policy.

``add_lora`` injects LoRA layers into the loaded model in place (``peft.inject_adapter_in_model``), so the
policy keeps its transformers class and every code path that reads ``model.model.language_model`` or
``model.lm_head`` (grouped forward, sampling, the parallel strategies) runs unchanged; peft marks only the
adapters (and ``modules_to_save``) trainable. ``freeze_parts`` turns gradients off for named parts
(``vision``: the vision tower with its merger), so the optimizer, built over the parameters that require a
gradient, keeps no state for them.

Adapter folders use PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``, keys prefixed
``base_model.model.`` as ``PeftModel.save_pretrained`` writes them), so ``PeftModel.from_pretrained`` and
``merge_and_unload`` read a veripo checkpoint as they read any adapter. transformers' own PEFT integration
(``model.add_adapter``) is not used: transformers 5.25 requires peft >= 0.22 for it.

Peers: EasyR1 (verl/workers/fsdp_workers.py, ``get_peft_model`` with ``exclude_modules`` for the vision
tower) and TRL (trl/trainer/grpo_trainer.py, a ``peft_config`` and the reference as the adapter-free base);
VerIPO keeps its own reference (the stage-start policy, adapters on), see veripo/recipes/dpo.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veripo.config.schema import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's state-dict prefix, kept so PeftModel.from_pretrained reads ours
LORA_EXTRA = "LoRA needs the peft package: pip install 'veripo[lora]'"

# model part -> the module to freeze. The Qwen-VL families keep the vision tower (with its merger) at
# model.model.visual.
FREEZABLE: dict[str, Callable[[nn.Module], nn.Module]] = {
    "vision": lambda model: model.model.visual,
}


def require_peft() -> Any:
    """The ``peft`` module, or ImportError with the line that installs it."""
    try:
        import peft
    except ImportError:
        raise ImportError(LORA_EXTRA) from None
    return peft


def freeze_parts(model: nn.Module, parts: tuple[str, ...] | list[str]) -> int:
    """Turn off the gradients of ``parts`` (keys of ``FREEZABLE``); returns the number of frozen elements."""
    frozen = 0
    for part in parts:
        if part not in FREEZABLE:
            raise ValueError(f"model.freeze: unknown part {part!r}; expected one of {sorted(FREEZABLE)}")
        module = FREEZABLE[part](model)
        module.requires_grad_(False)
        frozen += sum(p.numel() for p in module.parameters())
    return frozen


def add_lora(model: nn.Module, lora: LoraConfig, seed: int) -> None:
    """Inject LoRA adapters per ``lora`` into ``model`` in place; only adapters and ``modules_to_save`` train.

    peft draws ``A`` from the global torch generator (``B`` starts at zero): drawn here from ``seed``, so a run
    and its resumed or repeated self start from the same adapters."""
    peft = require_peft()
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             exclude_modules=lora.exclude_modules, modules_to_save=list(lora.modules_to_save) or None,
                             bias="none")
    config.base_model_name_or_path = str(getattr(model, "name_or_path", "") or "") or None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(config, model)
    except ValueError as e:  # peft's "Target modules {...} not found in the base model"
        raise ValueError(f"lora.target_modules {lora.target_modules!r}: {e}") from None


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` carries peft adapters (False when peft is not installed)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors (and ``modules_to_save``) under PEFT's saved names (``get_peft_model_state_dict``)."""
    return require_peft().get_peft_model_state_dict(model)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(elements that train, all elements)."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def is_adapter_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def save_adapters(model: nn.Module, folder: Path) -> None:
    """Write ``model``'s adapters to ``folder`` in PEFT's format (config + safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in adapter_state(model).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(folder))


def load_adapters(model: nn.Module, folder: Path) -> None:
    """Set ``model``'s adapters (already injected, same configuration) to those saved in ``folder``, exactly.

    Raises ValueError naming the folder when a saved tensor has no adapter in the model or an adapter is
    missing from the folder."""
    from safetensors.torch import load_file

    if not is_adapter_folder(folder):
        raise ValueError(f"{folder}: no {ADAPTER_WEIGHTS} with {ADAPTER_CONFIG} (not an adapter checkpoint)")
    saved = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    expected = set(adapter_state(model))
    if set(saved) != expected:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: adapters do not match the model's (missing "
                         f"{sorted(expected - set(saved))[:5]}, unexpected {sorted(set(saved) - expected)[:5]}); "
                         "was it saved with another lora: section?")
    require_peft().set_peft_model_state_dict(model, saved)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the adapter config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def add_saved_adapters(model: nn.Module, folder: Path) -> None:
    """Inject the adapters configured in ``folder`` into a base ``model`` and load their weights."""
    peft = require_peft()
    config = peft.LoraConfig.from_pretrained(str(folder))
    peft.inject_adapter_in_model(config, model)
    load_adapters(model, folder)


def merged_model(base: nn.Module, folder: Path) -> nn.Module:
    """``base`` with the adapters of ``folder`` merged into its weights (``PeftModel.merge_and_unload``): a plain
    transformers model that ``save_pretrained`` writes and ``from_pretrained`` loads without peft."""
    peft = require_peft()
    return peft.PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
