"""The rollout engine contract: a batch of questions in, G sampled responses per question out.

Every engine (transformers on CPU/GPU here, vLLM on clusters) implements `RolloutEngine.generate`,
`sync_weights` and `release`. Engines return plain records, so the GRPO recipe never touches an engine's
internals: token ids (for the policy forward), text (for rewards and the verifier) and per-token log-probs
(old log-probs for the clipped ratio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample a group of responses for one question.

    Attributes:
        num_generations: G, responses per question (the GRPO group size).
        temperature: softmax temperature (> 0); ignored when `greedy`.
        top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole vocabulary. Ignored when `greedy`.
        max_new_tokens: hard cap on response length; a response that hits it finishes with "length".
        stop_strings: a response stops after the token that completes the first of these strings
            (the token is kept: its log-prob is part of the response).
        greedy: argmax decoding (all G responses are then identical).
        repetition_penalty: HF's CTRL-style penalty (Keskar et al. 2019) on every token already in the prompt
            or the response: a positive logit is divided by it, a negative one multiplied; 1.0 is off.
        seed: seeds the engine's own generator; the same seed and inputs give the same responses.
            None draws a seed from torch's global generator (so `torch.manual_seed` still governs it).
    """

    num_generations: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ("</answer>",)
    greedy: bool = False
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.num_generations, int) or self.num_generations < 1:
            problems.append(f"num_generations must be an integer >= 1, got {self.num_generations!r}")
        if not self.greedy and not self.temperature > 0:
            problems.append(f"temperature must be > 0 when sampling (use greedy=True for argmax), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if isinstance(self.stop_strings, str) or any(not isinstance(s, str) or not s for s in self.stop_strings):
            problems.append(f"stop_strings must be a tuple of non-empty strings, got {self.stop_strings!r}")
        if problems:
            raise ValueError("SamplingParams: " + "; ".join(problems))


@dataclass(frozen=True)
class GeneratedResponse:
    """One sampled response.

    Attributes:
        token_ids: the sampled tokens, R of them, including the final EOS or stop-completing token; no padding.
        text: `token_ids` decoded with special tokens skipped.
        logprobs: R log-probs of `token_ids` under the sampling policy: softmax(logits / temperature), temperature
            1 when greedy; no top-p, repetition penalty or banned-token masking.
        finish_reason: "stop" (a stop string), "eos" (an end-of-text token) or "length" (max_new_tokens).
    """

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason


@dataclass(frozen=True)
class GroupOutput:
    """The G responses to one question, and the prompt length P they were sampled after."""

    responses: list[GeneratedResponse]
    prompt_tokens: int


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples G responses per question."""

    def generate(self, prompts: Sequence[dict[str, torch.Tensor]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[GroupOutput]:
        """Sample `params.num_generations` responses for each prompt (`seeds`: one generator seed per prompt).

        Args:
            prompts: one dict of model inputs per question, each a batch of one: `input_ids` and
                `attention_mask` (1, P); `mm_token_type_ids` (1, P) (0 text, 1 image, 2 video); and for
                the media it holds `pixel_values_videos` + `video_grid_thw` (+ `second_per_grid_ts`) and/or
                `pixel_values` + `image_grid_thw`, as a Qwen2-VL/Qwen2.5-VL processor returns them.
            params: sampling settings shared by the whole batch.

        Returns:
            One `GroupOutput` per prompt, in order.
        """
        ...

    def sync_weights(self, model, version: int) -> None:
        """Make the engine sample from `model`'s current weights, `version` naming them (the global optimizer
        step): an engine with its own copy (vLLM) pushes them when the version changed; one that samples from
        the live policy (transformers) has nothing to do. Called with whole (gathered) weights."""
        ...

    def release(self) -> None:
        """Sampling is over until the next `sync_weights`: an engine may free its memory for training."""
        ...


def check_prompt(prompt: dict[str, torch.Tensor], index: int) -> None:
    """Raise a ValueError naming the prompt and the field when a prompt is not a batch-of-1 input dict."""
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        value = prompt.get(key)
        if value is None:
            raise ValueError(
                f"prompt {index}: missing '{key}' (expected a (1, P) tensor; pass mm_token_type_ids or Qwen-VL "
                "silently uses 1-D positions)"
            )
        if value.dim() != 2 or value.shape[0] != 1:
            raise ValueError(f"prompt {index}: '{key}' must have shape (1, P), got {tuple(value.shape)}")
    if prompt["attention_mask"].shape != prompt["input_ids"].shape or not bool(prompt["attention_mask"].all()):
        raise ValueError(f"prompt {index}: 'attention_mask' must be all ones with the shape of 'input_ids' (unpadded)")
    for pixels, grid in (("pixel_values_videos", "video_grid_thw"), ("pixel_values", "image_grid_thw")):
        if (prompt.get(pixels) is None) != (prompt.get(grid) is None):
            raise ValueError(f"prompt {index}: '{pixels}' and '{grid}' must be given together")


def question_seed(base_seed: int, question_index: int) -> int:
    """A distinct, reproducible 63-bit seed per question of a call."""
    return (base_seed * 1_000_003 + question_index * 7_919 + 1) % (2**63 - 1)
