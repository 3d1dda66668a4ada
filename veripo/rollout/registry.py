"""``rollout.engine`` by name: each engine's factory builds it for a stage's policy and rollout settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from veripo.config.schema import RolloutConfig
from veripo.rollout.engine import RolloutEngine


def transformers_engine(policy: Any, rollout: RolloutConfig, *, seed: int, dtype: str, rank: int = 0,
                        world: int = 1) -> RolloutEngine:
    from veripo.rollout.hf_engine import HFRolloutEngine

    return HFRolloutEngine(policy.model, policy.tokenizer, max_batch_questions=rollout.batch_questions)


def vllm_engine(policy: Any, rollout: RolloutConfig, *, seed: int, dtype: str, rank: int = 0,
                world: int = 1) -> RolloutEngine:
    from veripo.rollout import vllm_engine as vllm

    llm, sampling_params_cls = vllm.load_llm(
        policy.path, dtype=dtype, seed=seed, temperature=rollout.temperature,
        gpu_memory_utilization=rollout.vllm_gpu_memory_utilization, max_model_len=rollout.vllm_max_model_len,
        sleep=rollout.vllm_sleep, rank=rank, world=world)
    return vllm.VLLMRolloutEngine(llm, sampling_params_cls, policy.model, policy.tokenizer, sleep=rollout.vllm_sleep)


ENGINES: dict[str, Callable[..., RolloutEngine]] = {"hf": transformers_engine, "vllm": vllm_engine}


def make_engine(policy: Any, rollout: RolloutConfig, *, seed: int, dtype: str, rank: int = 0,
                world: int = 1) -> RolloutEngine:
    """The engine ``rollout.engine`` names, for ``policy`` (a ``veripo.models.Policy``) on this data-parallel
    ``rank`` of ``world``."""
    return ENGINES[rollout.engine](policy, rollout, seed=seed, dtype=dtype, rank=rank, world=world)


def check_engine_installed(engine: str) -> None:
    """A ``ConfigError`` naming the extra when the engine's package is missing (before a run writes anything)."""
    if engine == "vllm":
        from veripo.rollout.vllm_engine import check_installed

        check_installed()
