"""A rollout engine that returns scripted responses per sample id, and a whitespace tokenizer: the runner's
bookkeeping (batching, resume, scoring, missing media) tested without a model."""

from __future__ import annotations

import time
from typing import Any

from veripo.data.records import Sample
from veripo.rollout.engine import GeneratedResponse, GroupOutput, SamplingParams


class WordTokenizer:
    """Tokens are whitespace-separated words."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))


def encode_id(sample: Sample) -> dict[str, Any]:
    """The 'model inputs' of a sample for the scripted engine: just its id."""
    return {"id": sample.id}


class ScriptedEngine:
    """``generate`` answers each prompt ``{"id": ...}`` with ``responses[id]`` (default ``default``).

    Records every call's ids; ``fail_after`` raises KeyboardInterrupt on that call (a simulated kill);
    ``delay_s`` sleeps per call (so a subprocess can be killed mid-run).
    """

    def __init__(self, responses: dict[str, str] | None = None, default: str = "<think>hm</think><answer>A</answer>",
                 fail_after: int | None = None, delay_s: float = 0.0) -> None:
        self.responses, self.default = responses or {}, default
        self.fail_after, self.delay_s = fail_after, delay_s
        self.calls: list[list[str]] = []

    def generate(self, prompts: list[dict[str, Any]], params: SamplingParams) -> list[GroupOutput]:
        assert params.greedy and params.num_generations == 1
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append([p["id"] for p in prompts])
        time.sleep(self.delay_s)
        out = []
        for p in prompts:
            text = self.responses.get(p["id"], self.default)
            n = len(text.split())
            response = GeneratedResponse(token_ids=list(range(n)), text=text, logprobs=[0.0] * n,
                                         finish_reason="stop")
            out.append(GroupOutput(responses=[response], prompt_tokens=10))
        return out
