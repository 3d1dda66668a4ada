"""KV caches for computing G responses against one prompt pass, safe under gradient checkpointing.

transformers' ``DynamicCache`` cannot serve training: gradient checkpointing replaces ``past_key_values`` with
None inside every checkpointed decoder layer (the responses then silently stop seeing the prompt), and a
continuation appends to a ``DynamicCache`` so it cannot be reused by a second response micro-batch. These two
caches never change after the prompt pass, so the backward-pass recomputation of a checkpointed layer sees
exactly what the forward saw; that makes it legitimate to set transformers' ``_can_checkpoint_with_cache`` on
the decoder layers while they are in use (``cache_kept_under_checkpointing``), which is what that flag is for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer


class _WriteOnceLayer(DynamicLayer):
    """Records the first K/V it is given (the prompt's) and always returns its input unchanged."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
        # A checkpoint recompute calls update again: return the recomputed states, keep the first ones.
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0  # the prompt attends only to itself: no past for the mask

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0


class WriteOnceCache(Cache):
    """Cache for the prompt pass: captures each layer's prompt K/V ``[1, kv_heads, P, head_dim]`` (with their
    autograd history) on the first write and never changes them afterwards."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[_WriteOnceLayer() for _ in range(num_layers)])

    def captured(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The prompt's keys and values, one ``[1, kv_heads, P, head_dim]`` tensor per layer."""
        missing = [i for i, layer in enumerate(self.layers) if not layer.is_initialized]
        if missing:
            raise RuntimeError(f"the prompt pass did not write the KV cache of layers {missing}")
        return [layer.keys for layer in self.layers], [layer.values for layer in self.layers]


class _ReadOnlyPrefixLayer(DynamicLayer):
    """Returns ``cat(prefix, new)`` along the sequence and stores nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch: int) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.prefix_keys = keys.expand(batch, -1, -1, -1)
        self.prefix_values = values.expand(batch, -1, -1, -1)
        self.keys, self.values = self.prefix_keys, self.prefix_values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return (
            torch.cat([self.prefix_keys, key_states], dim=-2),
            torch.cat([self.prefix_values, value_states], dim=-2),
        )

    def get_seq_length(self) -> int:
        return self.prefix_keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class ReadOnlyPrefixCache(Cache):
    """Cache for a response continuation: the prompt's K/V ``[1, kv_heads, P, head_dim]`` per layer, expanded
    (a view, no copy) to ``batch`` responses. Reusable by any number of continuations and recomputations."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], batch: int) -> None:
        super().__init__(layers=[_ReadOnlyPrefixLayer(k, v, batch) for k, v in zip(keys, values)])


@contextmanager
def cache_kept_under_checkpointing(layers: nn.ModuleList) -> Iterator[None]:
    """Let checkpointed decoder ``layers`` keep ``past_key_values`` (only sound for the caches above).

    Raises ``ValueError`` for reentrant checkpointing: it runs the forward without autograd, so gradients
    could not flow through the cached prompt K/V.
    """
    for layer in layers:
        checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(layer, "gradient_checkpointing", False) and getattr(checkpoint, "keywords", {}).get("use_reentrant"):
            raise ValueError(
                "shared-prefix log-probs need non-reentrant gradient checkpointing: call "
                "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
            )
    previous = [layer.__dict__.get("_can_checkpoint_with_cache") for layer in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            if value is None:
                del layer._can_checkpoint_with_cache
            else:
                layer._can_checkpoint_with_cache = value
