"""Model families behind one seam: what differs between Qwen2-VL / Qwen2.5-VL, Qwen3-VL and Qwen3.5 lives in one
file per family (``qwen2_vl.py``, ``qwen3_vl.py``, ``qwen3_5.py``), found by the checkpoint's ``model_type``.

The rest of ``veripo.models`` (loading, the processor, the grouped forward, the tiny builder) and the rollout
engine ask the family and never test a model type themselves. To add a family: one file with a ``ModelFamily``
subclass, one line in ``_ALL`` below, and its tiny model in the parametrised tests of ``tests/models``.
"""

from __future__ import annotations

from typing import Any

from veripo.models.families.base import ModelFamily
from veripo.models.families.qwen2_vl import QWEN2_5_VL, QWEN2_VL
from veripo.models.families.qwen3_5 import QWEN3_5
from veripo.models.families.qwen3_vl import QWEN3_VL

_ALL: tuple[ModelFamily, ...] = (QWEN2_5_VL, QWEN2_VL, QWEN3_VL, QWEN3_5)

# config.json model_type -> its family
FAMILIES: dict[str, ModelFamily] = {t: f for f in _ALL for t in f.model_types}
# the names users type (``veripo demo --family``, ``model.family``) -> the family; Qwen2-VL shares the module
# of Qwen2.5-VL but has no tiny builder of its own
FAMILY_NAMES: dict[str, ModelFamily] = {f.name: f for f in _ALL if f.buildable}


def family_of_type(model_type: str | None) -> ModelFamily:
    """The family of a config.json ``model_type``; ValueError listing the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def family_named(name: str) -> ModelFamily:
    """The family a user names (``qwen2.5-vl``, ``qwen3-vl``, ``qwen3.5``); ValueError listing them otherwise."""
    if name not in FAMILY_NAMES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILY_NAMES)}")
    return FAMILY_NAMES[name]


def family_of(model: Any) -> ModelFamily:
    """The family of a loaded transformers model (by ``model.config.model_type``)."""
    return family_of_type(getattr(getattr(model, "config", None), "model_type", None))


__all__ = ["FAMILIES", "FAMILY_NAMES", "ModelFamily", "family_named", "family_of", "family_of_type"]
