"""The prefill-once engine with the visual feature cache: the same tokens and log-probs as without it (seeded
sampling, batched questions), and the vision tower runs once per video over repeated rollout phases."""

from __future__ import annotations

import torch
from test_hf_engine import sampled

from veripo.models.vision_cache import VisionFeatureCache, use_vision_cache
from veripo.rollout import HFRolloutEngine


def test_cached_rollouts_equal_uncached_and_run_the_tower_once_per_video(model, prompts, tokenizer):
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=2)
    expected = engine.generate(prompts, sampled(seed=5))
    cache = VisionFeatureCache(memory_bytes=1 << 30)
    use_vision_cache(model, cache)
    calls = []
    hook = model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        phases = [engine.generate(prompts, sampled(seed=5)) for _ in range(2)]
    finally:
        hook.remove()
        use_vision_cache(model, None)
    assert len(calls) == len(prompts)  # once per video in the first phase; the second phase reads the cache
    assert cache.counts["misses"] == len(prompts) and cache.counts["hits"] == len(prompts)
    for groups in phases:
        for got, want in zip(groups, expected, strict=True):
            for a, b in zip(got.responses, want.responses, strict=True):
                assert a.token_ids == b.token_ids
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
