"""Token log-probs (and entropy) from final hidden states: pure tensor maths, no model family, no distribution.

``veripo.models.grouped_forward`` runs a model family's layers (shared prompt prefix, visual tokens) and hands
the last hidden states here; every trainer's log-probs, entropies and temperature scaling come from this one
function.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

# Above this many logits per forward, log-probs are computed in token chunks whose logits are recomputed in
# backward instead of kept: a Qwen vocabulary (152k) makes [G, R, V] logits the largest tensor of a step.
LOGITS_CHUNK_ELEMENTS = 2**27


class LogProbs(NamedTuple):
    """``log_probs`` ``[G, R]`` of the response tokens; ``entropy`` ``[G, R]`` of the policy there, or None."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None


def _log_probs_from_hidden(
    lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden`` ``[n, H]`` -> log-probs of ``targets`` ``[n]`` and entropy ``[n]`` (zeros unless asked), fp32,
    under ``softmax(logits / temperature)``."""
    logits = lm_head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    if not with_entropy:
        return log_probs, torch.zeros_like(log_probs)
    return log_probs, log_norm - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def token_log_probs(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool,
                    temperature: float = 1.0, chunk_elements: int | None = None) -> LogProbs:
    """``hidden`` ``[g, R, H]`` predicting ``targets`` ``[g, R]`` through ``lm_head`` -> log-probs (and entropy)
    ``[g, R]`` in fp32. Past ``chunk_elements`` logits (default ``LOGITS_CHUNK_ELEMENTS``) the tokens go in
    checkpointed chunks."""
    g, length, width = hidden.shape
    chunk_elements = LOGITS_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    flat_hidden, flat_targets = hidden.reshape(-1, width), targets.reshape(-1)
    chunk = max(1, chunk_elements // lm_head.out_features)
    if flat_targets.numel() <= chunk:
        log_probs, entropy = _log_probs_from_hidden(lm_head, flat_hidden, flat_targets, with_entropy, temperature)
    else:
        parts = [
            torch.utils.checkpoint.checkpoint(
                _log_probs_from_hidden, lm_head, h, t, with_entropy, temperature, use_reentrant=False
            )
            for h, t in zip(flat_hidden.split(chunk), flat_targets.split(chunk))
        ]
        log_probs, entropy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return LogProbs(log_probs.view(g, length), entropy.view(g, length) if with_entropy else None)
