"""Rollouts on vLLM (``rollout.engine: vllm``), colocated with training: the same process and GPU hold the
policy being trained and a vLLM ``LLM`` that samples from a copy of its weights, pushed after every change.

UNTESTED ON GPU: vLLM cannot be installed on the machines this was written on. It is written against vLLM's
documented offline API (``vllm.LLM``, ``LLM.generate`` with token-id prompts, ``multi_modal_data`` embedding
inputs, ``SamplingParams``, ``LLM.apply_model``, ``reset_prefix_cache``, ``sleep`` / ``wake_up``) and tested
here through a fake ``LLM`` honouring the same interface (``tests/rollout/fake_vllm.py``), which runs the tiny
transformers model. ``bench/gpu_smoke.py --engine vllm`` on a machine with vLLM is what would lift the mark.

How the peers do it (read, not copied):
- TRL ``trl/generation/vllm_generation.py`` (colocate mode): ``LLM(..., distributed_executor_backend=
  "external_launcher", enable_sleep_mode=..., logprobs_mode="processed_logprobs")``; weights pushed one
  parameter at a time through the worker model's ``load_weights`` and ``reset_prefix_cache()`` after.
- EasyR1 ``verl/workers/sharding_manager/fsdp_vllm.py``: ``wake_up(tags=["weights"])``, the whole state dict
  through ``load_weights``, then ``wake_up(tags=["kv_cache"])``; ``sleep`` after the rollout;
  ``verl/workers/rollout/vllm_rollout_spmd.py``: ``load_format="dummy"`` (the first sync loads the weights),
  token-id prompts with ``multi_modal_data``.

What veripo does differently, and why:
- Media reach vLLM as embeddings computed by the policy's own vision tower from the very pixels the trainer
  uses (vLLM's embedding inputs: ``{"video": {"video_embeds", "video_grid_thw"}}``, ``enable_mm_embeds``), so
  the sampler and the trainer see the same visual tokens; vLLM's own processor would resize the frames its own
  way. The prompt's expanded runs of ``<|video_pad|>`` / ``<|image_pad|>`` become one placeholder each, which
  vLLM expands again from the grid. This path is the Qwen2-VL / Qwen2.5-VL family's (``get_video_features``);
  other families are refused with a message.
- Log-probs: at temperature 1 vLLM's ``raw_logprobs`` are exactly this engine contract's (log-softmax of the
  raw logits). At another temperature ``processed_logprobs`` are softmax(logits / T) renormalised over the
  tokens vLLM may sample: without the vision tokens (logit bias -100) and outside top-p. With top_p 1 they
  differ from the contract by log(1 - p(vision tokens)), ~0 for a trained model (0.02 nats on the random tiny
  one); with top_p < 1 by the mass top-p cuts. The GRPO old-log-prob gap metric shows the size on a real run.
- Weights are pushed through ``LLM.apply_model(fn)``, vLLM's documented hook that runs ``fn`` on each
  worker's model (``WorkerBase.apply_model``; with ``external_launcher`` the one worker is in this process, so
  nothing is serialised), with the policy's transformers names, which vLLM's Qwen-VL ``load_weights`` maps
  (``hf_to_vllm_mapper``). TRL and EasyR1 reach the same ``load_weights`` through
  ``llm.llm_engine.model_executor.driver_worker...model_runner.model``, a private path that moved between
  vLLM releases.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from veripo.config import ConfigError
from veripo.rollout.engine import FinishReason, GeneratedResponse, GroupOutput, SamplingParams, check_prompt, question_seed
from veripo.rollout.sampling import end_of_text_ids, vision_token_ids

EXTRA = "pip install 'veripo[vllm]'"
VLLM_SEED_RANGE = 2**31 - 1  # per-request seeds kept in int32 (vLLM seeds a torch generator per request)
BANNED_LOGIT_BIAS = -100.0  # the lowest logit bias vLLM accepts (OpenAI's range): never sampled in practice
MEDIA = (  # modality, pixel key, grid key, embeddings key, the config's placeholder token id attribute
    ("image", "pixel_values", "image_grid_thw", "image_embeds", "image_token_id"),
    ("video", "pixel_values_videos", "video_grid_thw", "video_embeds", "video_token_id"),
)


def check_installed() -> None:
    """A ``ConfigError`` naming the extra when vLLM is not installed (before a run writes anything)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"config key 'rollout.engine': vllm needs the 'vllm' package, which is not installed: "
                          f"{EXTRA} (CUDA machines only)")


def logprobs_mode(temperature: float) -> str:
    """vLLM's ``logprobs_mode`` closest to this engine contract at ``temperature`` (module docstring)."""
    return "raw_logprobs" if temperature == 1.0 else "processed_logprobs"


def colocated_environment(rank: int, world: int) -> None:
    """What vLLM's ``external_launcher`` reads to join this process's training world, as TRL's colocate mode
    sets it (``trl/trainer/utils.py: ensure_master_addr_port``): torchrun has set it all already, a one-process
    run has not."""
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "localhost")
    if not os.environ.get("MASTER_PORT"):
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def load_llm(model_dir: Path, *, dtype: str, seed: int, temperature: float, gpu_memory_utilization: float,
             max_model_len: int | None, sleep: bool, rank: int = 0, world: int = 1) -> tuple[Any, Callable[..., Any]]:
    """A colocated ``vllm.LLM`` on ``model_dir`` and vLLM's ``SamplingParams`` class. Weights are not read from
    disk (``load_format="dummy"``): the first ``sync_weights`` pushes the policy's. Every data-parallel rank
    builds its own (tensor parallel size 1)."""
    check_installed()
    colocated_environment(rank, world)
    from vllm import LLM
    from vllm import SamplingParams as VLLMSamplingParams

    llm = LLM(model=str(model_dir), dtype=dtype, seed=seed, tensor_parallel_size=1,
              distributed_executor_backend="external_launcher", load_format="dummy",
              gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
              enable_sleep_mode=sleep, enable_prefix_caching=True, enable_mm_embeds=True,
              logprobs_mode=logprobs_mode(temperature))
    return llm, VLLMSamplingParams


def collapse_placeholders(ids: list[int], token: int, lengths: list[int], where: str) -> list[int]:
    """``ids`` with each run of ``token`` (one per media item, ``lengths[i]`` long) cut to one ``token``, as
    vLLM expects a token-id prompt before it expands the placeholders from the grid."""
    out: list[int] = []
    runs: list[int] = []
    for tok in ids:
        if tok == token and out and out[-1] == token and runs:
            runs[-1] += 1
            continue
        if tok == token:
            runs.append(1)
        out.append(tok)
    if runs != lengths:
        raise ValueError(f"{where}: placeholder runs of token {token} have lengths {runs}; the grid gives "
                         f"{lengths} (one run of t*h*w/merge^2 tokens per item)")
    return out


def visual_embeddings(model: Any, modality: str, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The policy's own visual tokens for one prompt's images or videos, concatenated (num_tokens, hidden)."""
    get = model.model.get_video_features if modality == "video" else model.model.get_image_features
    with torch.no_grad():
        out = get(pixels.to(model.device), grid.to(model.device), return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)


def vllm_request(model: Any, prompt: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """One vLLM token-id prompt: ``prompt_token_ids`` with one placeholder per media item and the items'
    embeddings and grids in ``multi_modal_data``."""
    ids = prompt["input_ids"][0].tolist()
    merge = int(model.config.vision_config.spatial_merge_size)
    media: dict[str, dict[str, torch.Tensor]] = {}
    for modality, pixel_key, grid_key, embeds_key, token_attr in MEDIA:
        grid = prompt.get(grid_key)
        if grid is None:
            continue
        token = int(getattr(model.config, token_attr))
        ids = collapse_placeholders(ids, token, (grid.prod(-1) // merge**2).tolist(), f"{where}: {grid_key}")
        media[modality] = {embeds_key: visual_embeddings(model, modality, prompt[pixel_key], grid),
                           grid_key: grid.cpu()}
        seconds = prompt.get("second_per_grid_ts") if modality == "video" else None
        if seconds is not None and not bool((seconds == 1.0).all()):
            # Qwen2.5-VL's temporal positions scale with it; 1.0 (frames at 2 fps) is what vLLM assumes without
            # it, so only other frame rates send it (whether vLLM's embedding inputs take it: untested)
            media[modality]["second_per_grid_ts"] = seconds.cpu()
    request: dict[str, Any] = {"prompt_token_ids": ids}
    if media:
        request["multi_modal_data"] = media
    return request


def finish_reason(completion: Any) -> FinishReason:
    """vLLM's ``finish_reason`` ("stop" | "length") and ``stop_reason`` (the stop string, a stop token id, or
    None for the model's EOS) as this contract's "stop" | "eos" | "length"."""
    if completion.finish_reason == "length":
        return "length"
    if completion.finish_reason != "stop":
        raise RuntimeError(f"vLLM finished a response with {completion.finish_reason!r} (expected stop or length)")
    return "stop" if isinstance(completion.stop_reason, str) else "eos"


def group_output(request_output: Any, tokenizer: Any, prompt_tokens: int) -> GroupOutput:
    """One vLLM ``RequestOutput`` (its ``outputs``: ``CompletionOutput`` with ``token_ids``, ``logprobs`` as
    one {token id: Logprob} dict per token, ``finish_reason``, ``stop_reason``) as a ``GroupOutput``."""
    responses = []
    for completion in request_output.outputs:
        token_ids = [int(t) for t in completion.token_ids]
        if completion.logprobs is None or len(completion.logprobs) != len(token_ids):
            raise RuntimeError("vLLM returned no log-prob per sampled token (SamplingParams.logprobs must be 0)")
        logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids)]
        responses.append(GeneratedResponse(token_ids=token_ids, logprobs=logprobs,
                                           text=tokenizer.decode(token_ids, skip_special_tokens=True),
                                           finish_reason=finish_reason(completion)))
    return GroupOutput(responses=responses, prompt_tokens=prompt_tokens)


class VLLMRolloutEngine:
    """A ``RolloutEngine`` on a colocated vLLM ``LLM`` (module docstring: untested on GPU).

    Args:
        llm: a ``vllm.LLM`` (``load_llm``) or an object with the same methods.
        sampling_params_cls: ``vllm.SamplingParams`` (or the fake's).
        model: the policy (a Qwen2-VL / Qwen2.5-VL ``*ForConditionalGeneration``); its vision tower embeds the
            media, its weights are what ``sync_weights`` pushes.
        tokenizer: the policy's tokenizer (decodes the responses as the transformers engine does).
        sleep: ``llm`` was built with ``enable_sleep_mode``: ``release`` frees its weights and KV cache while
            the policy trains, ``sync_weights`` wakes it.
    """

    def __init__(self, llm: Any, sampling_params_cls: Callable[..., Any], model: Any, tokenizer: Any, *,
                 sleep: bool = False) -> None:
        if hasattr(model, "peft_config"):
            raise ValueError("rollout.engine vllm with LoRA adapters is not supported yet (the push would have to merge "
                             "them first, as TRL does); use rollout.engine hf")
        inner = getattr(model, "model", None)
        if not (hasattr(inner, "get_video_features") and hasattr(getattr(model.config, "vision_config", None),
                                                                   "spatial_merge_size")):
            raise ValueError(f"the vLLM engine feeds media as the policy's own visual embeddings, which needs a "
                             f"Qwen2-VL / Qwen2.5-VL model; got {type(model).__name__} (use rollout.engine hf)")
        self.llm, self.sampling_params_cls, self.model, self.sleep = llm, sampling_params_cls, model, sleep
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.banned_token_ids = vision_token_ids(model.config, self.tokenizer)
        self.eos_token_ids = end_of_text_ids(getattr(model, "generation_config", None), self.tokenizer)
        self.synced_version: int | None = None  # the policy version vLLM holds; None: none (or released)

    def sync_weights(self, model: Any, version: int) -> None:
        """Push ``model``'s weights to vLLM unless it already holds ``version`` of them (call with whole weights,
        i.e. inside ``ParallelStrategy.gathered_weights``)."""
        if self.synced_version == version:
            return
        if self.sleep:
            self.llm.wake_up(tags=["weights"])
        weights = [(name, param.detach()) for name, param in model.named_parameters()]
        self.llm.apply_model(lambda worker_model: worker_model.load_weights(weights))
        if self.sleep:
            self.llm.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.synced_version = version

    def release(self) -> None:
        """Free vLLM's GPU memory for training (sleep level 2: weights and KV cache dropped; the next
        ``sync_weights`` pushes the weights again)."""
        if self.sleep:
            self.llm.sleep(level=2)
            self.synced_version = None

    def sampling_params(self, params: SamplingParams, seed: int) -> Any:
        """vLLM ``SamplingParams`` for one question: G samples, log-prob of each sampled token, stop strings
        kept in the response, every end-of-text id a stop, vision tokens banned."""
        return self.sampling_params_cls(
            n=params.num_generations, temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p, max_tokens=params.max_new_tokens,
            repetition_penalty=params.repetition_penalty, stop=list(params.stop_strings),
            include_stop_str_in_output=True, stop_token_ids=list(self.eos_token_ids), logprobs=0,
            seed=seed % VLLM_SEED_RANGE,
            logit_bias={token: BANNED_LOGIT_BIAS for token in self.banned_token_ids} or None,
            skip_special_tokens=True)

    def generate(self, prompts: Sequence[dict[str, torch.Tensor]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[GroupOutput]:
        """See ``RolloutEngine.generate``; one vLLM call for the whole batch (vLLM schedules it). Call
        ``sync_weights`` first: this samples from whatever weights vLLM holds."""
        for index, prompt in enumerate(prompts):
            check_prompt(prompt, index)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: got {len(seeds)} seeds for {len(prompts)} prompts")
        if self.synced_version is None:
            raise RuntimeError("VLLMRolloutEngine.generate before sync_weights: vLLM holds no policy weights")
        base_seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        seeds = list(seeds) if seeds is not None else [question_seed(base_seed, i) for i in range(len(prompts))]
        requests = [vllm_request(self.model, prompt, f"prompt {i}") for i, prompt in enumerate(prompts)]
        outputs = self.llm.generate(requests, sampling_params=[self.sampling_params(params, s) for s in seeds],
                                    use_tqdm=False)
        return [group_output(out, self.tokenizer, int(prompt["input_ids"].shape[1]))
                for out, prompt in zip(outputs, prompts)]
