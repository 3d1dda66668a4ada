"""A stand-in for ``vllm.LLM`` and ``vllm.SamplingParams`` on CPU, honouring the part of their documented
interface ``veripo.rollout.vllm_engine`` uses, and behaving as vLLM does where the engine depends on it:

- ``SamplingParams(**kwargs)`` accepts only vLLM's keyword names (the signature in vLLM's docs,
  docs.vllm.ai "Sampling Parameters"), so a misspelt or invented field fails here as it would there.
- ``LLM.generate(prompts, sampling_params=[one per prompt], use_tqdm=False)`` takes token-id prompts with
  ``multi_modal_data`` embedding inputs, expands each placeholder to ``t*h*w/merge^2`` tokens from the grid
  (what vLLM's Qwen-VL processor does), and samples ``n`` responses per prompt from its *own* copy of the model
  (a transformers model fed the given embeddings through ``mm_encoder_outputs``), with vLLM's outputs:
  ``RequestOutput.outputs[i]`` with ``token_ids``, ``logprobs`` (one {token id: Logprob} per token, the sampled
  token included), ``finish_reason`` ("stop" | "length") and ``stop_reason`` (the stop string, the stop token
  id, or None).
- ``logprobs_mode`` "raw_logprobs" (log-softmax of the raw logits) or "processed_logprobs" (of the logits after
  logit bias, temperature and top-p).
- Weights start as garbage (``load_format="dummy"``); ``apply_model(fn)`` runs ``fn`` on the worker model,
  whose ``load_weights(iterable of (name, tensor))`` copies by transformers name and fails on unknown names;
  ``sleep(level=2)`` discards the weights, ``wake_up`` maps memory back (still garbage until loaded).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from veripo.rollout.sampling import top_p_filter

VLLM_SAMPLING_FIELDS = {
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "logits_processors",
    "include_stop_str_in_output", "truncate_prompt_tokens", "output_kind", "logit_bias", "allowed_token_ids",
    "extra_args", "bad_words",
}


class FakeSamplingParams(SimpleNamespace):
    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - VLLM_SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
        defaults = dict(n=1, temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=None, stop=None,
                        stop_token_ids=None, max_tokens=16, logprobs=None, logit_bias=None,
                        include_stop_str_in_output=False)
        super().__init__(**{**defaults, **kwargs})


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None


class _Worker:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def load_weights(self, weights) -> set[str]:
        params = dict(self.model.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"load_weights: no parameter {name!r}")
            params[name].data.copy_(tensor)
            loaded.add(name)
        return loaded


@dataclass
class FakeLLM:
    template: torch.nn.Module  # a model of the right architecture (its weights are not used)
    tokenizer: Any
    logprobs_mode: str = "raw_logprobs"
    model: torch.nn.Module = field(init=False)
    calls: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.template).eval()
        self._garbage()

    def _garbage(self) -> None:
        with torch.no_grad():
            for p in self.model.parameters():
                p.uniform_(-1, 1)

    # -- the methods VLLMRolloutEngine calls ----------------------------------------------------------------
    def apply_model(self, fn):
        self.calls.append("apply_model")
        return [fn(_Worker(self.model))]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep{level}")
        if level == 2:
            self._garbage()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(f"wake_up{tags}")

    @torch.no_grad()
    def generate(self, prompts: list[dict], sampling_params: list[FakeSamplingParams], use_tqdm: bool = True):
        self.calls.append("generate")
        assert len(prompts) == len(sampling_params)
        self.requests.extend(prompts)
        return [SimpleNamespace(outputs=[self._sample(p, sp, i) for i in range(sp.n)])
                for p, sp in zip(prompts, sampling_params)]

    # -- vLLM's behaviour, on the transformers model -------------------------------------------------------
    def expand(self, request: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """input_ids, mm_token_type_ids and the model's media kwargs, placeholders expanded from the grids."""
        cfg = self.model.config
        merge = cfg.vision_config.spatial_merge_size
        ids = list(request["prompt_token_ids"])
        media = request.get("multi_modal_data", {})
        kwargs: dict[str, Any] = {"mm_encoder_outputs": {}}
        for modality, token, kind in (("image", cfg.image_token_id, 1), ("video", cfg.video_token_id, 2)):
            if modality not in media:
                continue
            item = media[modality]
            grid = item[f"{modality}_grid_thw"]
            lengths = (grid.prod(-1) // merge**2).tolist()
            embeds = item[f"{modality}_embeds"]
            assert embeds.shape[0] == sum(lengths), (embeds.shape, lengths)
            positions = [i for i, t in enumerate(ids) if t == token]
            assert len(positions) == len(lengths), "one placeholder per item"
            for pos, n in reversed(list(zip(positions, lengths))):
                ids[pos : pos + 1] = [token] * n
            kwargs["mm_encoder_outputs"][modality] = BaseModelOutputWithPooling(
                pooler_output=torch.split(embeds, lengths))
            kwargs[f"{modality}_grid_thw"] = grid
            if "second_per_grid_ts" in item:
                kwargs["second_per_grid_ts"] = item["second_per_grid_ts"]
        input_ids = torch.tensor([ids])
        types = torch.zeros_like(input_ids)
        types[input_ids == cfg.image_token_id] = 1
        types[input_ids == cfg.video_token_id] = 2
        return input_ids, types, kwargs

    def _sample(self, request: dict, sp: FakeSamplingParams, index: int) -> SimpleNamespace:
        input_ids, types, media = self.expand(request)
        gen = torch.Generator().manual_seed((int(sp.seed) if sp.seed is not None else 0) + 7919 * index)
        response: list[int] = []
        logprobs: list[dict[int, Logprob]] = []
        finish, stop_reason = "length", None
        for _ in range(sp.max_tokens):
            ids = torch.cat([input_ids, torch.tensor([response], dtype=torch.long)], dim=1)
            mm_types = torch.cat([types, torch.zeros(1, len(response), dtype=torch.long)], dim=1)
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm_types,
                                **{k: (dict(v) if k == "mm_encoder_outputs" else v) for k, v in media.items()}
                                ).logits[0, -1].float()
            assert sp.repetition_penalty == 1.0, "the fake does not implement vLLM's repetition penalty"
            processed = logits.clone()
            for token, bias in (sp.logit_bias or {}).items():
                processed[token] += bias
            greedy = sp.temperature == 0.0
            processed = processed if greedy else top_p_filter((processed / sp.temperature)[None], sp.top_p)[0]
            token = int(processed.argmax()) if greedy else int(torch.multinomial(processed.softmax(-1), 1, generator=gen))
            source = logits if self.logprobs_mode == "raw_logprobs" else processed
            response.append(token)
            logprobs.append({token: Logprob(float(source.log_softmax(-1)[token]), rank=1)})
            if token in (sp.stop_token_ids or []):
                finish, stop_reason = "stop", token
                break
            text = self.tokenizer.decode(response, skip_special_tokens=True)
            hit = next((s for s in (sp.stop or []) if s in text), None)
            if hit is not None:
                finish, stop_reason = "stop", hit
                break
        return SimpleNamespace(token_ids=response, logprobs=logprobs, finish_reason=finish, stop_reason=stop_reason)
