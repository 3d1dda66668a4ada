"""Logit processing and stopping for sampling, as pure functions.

Each function matches the transformers logits processor of the same job, so an engine built on them samples
from the same distribution as `model.generate` with the same settings (checked in tests/rollout).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Placeholder and delimiter tokens of Qwen2-VL / Qwen2.5-VL vision inputs. A sampled one breaks the next
# forward ("video features and video tokens do not match") and is never a meaningful answer token.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_OF_TEXT_TOKENS = ("<|im_end|>", "<|endoftext|>")


def vision_token_ids(config, tokenizer) -> list[int]:
    """Ids of every vision special token, from the model config (`*_token_id` naming image/video/vision) and
    from the tokenizer's vocabulary (`VISION_SPECIAL_TOKENS`), sorted and deduplicated."""
    ids: set[int] = set()
    for source in (config, getattr(config, "text_config", None)):
        for name in dir(source) if source is not None else ():
            if name.endswith("_token_id") and any(word in name for word in ("image", "video", "vision")):
                value = getattr(source, name, None)
                if isinstance(value, int) and value >= 0:
                    ids.add(value)
    ids.update(_known_token_ids(tokenizer, VISION_SPECIAL_TOKENS))
    return sorted(ids)


def end_of_text_ids(generation_config, tokenizer) -> list[int]:
    """Ids that end a response: the generation config's `eos_token_id` (int or list), the tokenizer's
    eos token, and Qwen's `<|im_end|>` / `<|endoftext|>` when the vocabulary has them."""
    ids: set[int] = set()
    configured = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    ids.update(_known_token_ids(tokenizer, END_OF_TEXT_TOKENS))
    return sorted(ids)


def _known_token_ids(tokenizer, tokens: Iterable[str]) -> set[int]:
    vocab = tokenizer.get_vocab()
    return {vocab[t] for t in tokens if t in vocab}


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL repetition penalty (Keskar et al. 2019) as transformers' `RepetitionPenaltyLogitsProcessor`.

    Args:
        logits: (N, V) next-token logits.
        seen: (N, V) bool, True for tokens already in row n's prompt or response.
        penalty: > 0; a seen token's positive logit is divided by it, a negative one multiplied.

    Returns:
        (N, V) penalised logits (a new tensor; `logits` is untouched).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020) exactly as transformers' `TopPLogitsWarper`.

    Keeps the smallest set of most likely tokens whose probability mass reaches `top_p` (always at least
    the most likely token) and sets the others to -inf.

    Args:
        logits: (N, V) temperature-scaled logits.
        top_p: in (0, 1]; 1 returns `logits` unchanged.

    Returns:
        (N, V) filtered logits.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def next_token_distribution(
    logits: torch.Tensor,
    *,
    banned: torch.Tensor,
    seen: torch.Tensor | None,
    repetition_penalty: float,
    temperature: float,
    top_p: float,
) -> torch.Tensor:
    """The sampling distribution's logits, processed in transformers' order: repetition penalty and banned
    tokens, then temperature, then top-p.

    Args:
        logits: (N, V) raw next-token logits (float32).
        banned: (V,) bool, True for tokens never to sample (vision specials).
        seen: (N, V) bool tokens already present per row, or None when `repetition_penalty` is 1.

    Returns:
        (N, V) processed logits; banned and filtered tokens are -inf.
    """
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    logits = logits.masked_fill(banned, float("-inf"))
    return top_p_filter(logits / temperature, top_p)


def completes_stop_string(tail_text: str, stop_strings: Iterable[str]) -> bool:
    """True when `tail_text` (the decoded last few tokens of a response, ending with the newest token)
    contains a stop string. The caller passes a window at least as many tokens long as the longest stop
    string has characters, so a stop string finished by the newest token is always inside it; an earlier
    occurrence would already have stopped the response."""
    return any(stop in tail_text for stop in stop_strings)
