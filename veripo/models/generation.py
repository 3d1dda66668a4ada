"""Reference sampling with ``model.generate``: passes ``mm_token_type_ids`` and never samples vision tokens.

This is the simple, obviously-correct path (the demo and tests use it); the fast prefill-once engine lives
in :mod:`veripo.rollout.hf_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veripo.models.tokenizer import VISION_SPECIAL_TOKENS


@dataclass
class SampledResponse:
    """One sampled continuation. ``finished`` is False when it stopped at ``max_new_tokens``."""

    text: str
    token_ids: list[int]
    finished: bool


def vision_token_ids(tokenizer) -> list[int]:
    """Sorted ids of ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>`` and
    ``<|video_pad|>`` in ``tokenizer``'s vocabulary. A sampled placeholder breaks the next forward
    ("video features and video tokens do not match"), so generation suppresses them."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)


def sample_responses(policy, inputs: dict[str, Any], n: int, *, max_new_tokens: int = 64,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> list[SampledResponse]:
    """Sample ``n`` responses to one prompt with ``model.generate(num_return_sequences=n)``.

    Args:
        policy: a :class:`~veripo.models.loading.Policy`.
        inputs: a batch-of-1 prompt from :func:`veripo.models.prompts.encode_prompt` (must include
            ``mm_token_type_ids``, without which Qwen2.5-VL silently uses 1-D positions).
        temperature: 0 means greedy decoding (all ``n`` responses are then the same).
        seed: seeds torch's RNG inside a forked RNG state, so the same seed gives the same responses and
            the caller's global RNG is left untouched.
    Returns:
        ``n`` responses; ``text`` is decoded without special tokens.
    """
    import torch

    if "mm_token_type_ids" not in inputs:
        raise ValueError("inputs lack 'mm_token_type_ids': build them with veripo.models.prompts.encode_prompt")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    model, tokenizer = policy.model, policy.tokenizer
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])
    device = model.device
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(
            **batch,
            **sampling,
            num_return_sequences=n if temperature > 0 else 1,  # greedy: one decode, repeated below
            max_new_tokens=max_new_tokens,
            suppress_tokens=vision_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt_len = batch["input_ids"].shape[1]
    if temperature <= 0:
        out = out.expand(n, -1)
    responses = []
    for row in out[:, prompt_len:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        ids = row[: ends[0] + 1] if ends else row
        text_ids = ids[:-1] if ends else ids
        responses.append(SampledResponse(tokenizer.decode(text_ids, skip_special_tokens=True), ids, bool(ends)))
    return responses
