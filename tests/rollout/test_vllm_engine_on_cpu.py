"""The vLLM rollout engine around a fake ``vllm.LLM`` (tests/rollout/fake_vllm.py) on the tiny Qwen2.5-VL: its
requests reproduce the trainer's prompt and visual tokens, its log-probs equal the trainer's teacher-forced
ones once the weights are synced (and not before), syncs happen once per policy version, sleep mode drops and
restores the weights, and vLLM's finish reasons map onto the engine contract. vLLM itself is not installed
here: none of this has run on a GPU."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from fake_vllm import FakeLLM, FakeSamplingParams
from test_hf_engine import teacher_forced_logprobs

from veripo.rollout import RolloutEngine, SamplingParams
from veripo.rollout.vllm_engine import (
    VLLMRolloutEngine,
    collapse_placeholders,
    finish_reason,
    logprobs_mode,
    visual_embeddings,
    vllm_request,
)


def sampled(seed: int, G: int = 2, temperature: float = 1.0, max_new_tokens: int = 8) -> SamplingParams:
    return SamplingParams(num_generations=G, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens,
                          seed=seed)


def engine_for(policy, tokenizer, *, mode: str = "raw_logprobs", sleep: bool = False) -> VLLMRolloutEngine:
    return VLLMRolloutEngine(FakeLLM(policy, tokenizer, logprobs_mode=mode), FakeSamplingParams, policy, tokenizer,
                             sleep=sleep)


def assert_logprobs_match(policy, prompts, groups, temperature: float = 1.0, atol: float = 1e-4) -> None:
    for prompt, group in zip(prompts, groups):
        assert group.prompt_tokens == prompt["input_ids"].shape[1]
        for response in group.responses:
            expected = teacher_forced_logprobs(policy, prompt, response.token_ids, temperature)
            assert torch.allclose(torch.tensor(response.logprobs), expected, atol=atol, rtol=0)


def test_the_engine_satisfies_the_protocol(model, tokenizer) -> None:
    assert isinstance(engine_for(model, tokenizer), RolloutEngine)


def test_a_request_is_the_trainers_prompt_with_one_placeholder_per_video_and_its_visual_tokens(model, tokenizer,
                                                                                               prompts) -> None:
    fake = FakeLLM(model, tokenizer)
    for i, prompt in enumerate(prompts):
        request = vllm_request(model, prompt, f"prompt {i}")
        assert request["prompt_token_ids"].count(model.config.video_token_id) == 1
        merge = model.config.vision_config.spatial_merge_size
        video_tokens = int(prompt["video_grid_thw"].prod()) // merge**2
        assert len(request["prompt_token_ids"]) == prompt["input_ids"].shape[1] - video_tokens + 1
        input_ids, types, _ = fake.expand(request)  # what vLLM's Qwen-VL processor expands back
        assert torch.equal(input_ids, prompt["input_ids"]) and torch.equal(types, prompt["mm_token_type_ids"])
        video = request["multi_modal_data"]["video"]
        assert torch.equal(video["video_grid_thw"], prompt["video_grid_thw"])
        with torch.no_grad():
            own = model.model.get_video_features(prompt["pixel_values_videos"], prompt["video_grid_thw"])
        assert torch.equal(video["video_embeds"], torch.cat(list(own.pooler_output)))


def test_placeholder_runs_that_disagree_with_the_grid_are_refused() -> None:
    assert collapse_placeholders([1, 7, 7, 7, 2, 7, 7, 3], 7, [3, 2], "p") == [1, 7, 2, 7, 3]
    with pytest.raises(ValueError, match=r"p: placeholder runs of token 7 have lengths \[3, 2\]; the grid gives \[3, 3\]"):
        collapse_placeholders([1, 7, 7, 7, 2, 7, 7, 3], 7, [3, 3], "p")


def test_logprobs_equal_the_trainers_after_a_sync_and_not_before(model, tokenizer, prompts) -> None:
    policy = copy.deepcopy(model)
    engine = engine_for(policy, tokenizer)
    with pytest.raises(RuntimeError, match="before sync_weights"):
        engine.generate(prompts[:1], sampled(1))
    engine.sync_weights(policy, version=0)
    groups = engine.generate(prompts, sampled(seed=3))
    assert [len(g.responses) for g in groups] == [2, 2, 2]
    assert_logprobs_match(policy, prompts, groups)

    with torch.no_grad():  # an optimizer step
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = engine.generate(prompts[:1], sampled(seed=3))[0].responses[0]
    fresh = teacher_forced_logprobs(policy, prompts[0], stale.token_ids)
    assert (torch.tensor(stale.logprobs) - fresh).abs().max() > 1e-3  # vLLM still holds the old weights

    engine.sync_weights(policy, version=1)
    assert_logprobs_match(policy, prompts[:2], engine.generate(prompts[:2], sampled(seed=4)))
    pushes = engine.llm.calls.count("apply_model")
    engine.sync_weights(policy, version=1)  # same version: nothing to push
    assert engine.llm.calls.count("apply_model") == pushes == 2


def test_same_seeds_same_samples_and_seeds_per_question(model, tokenizer, prompts) -> None:
    engine = engine_for(model, tokenizer)
    engine.sync_weights(model, version=0)
    a = engine.generate(prompts, sampled(seed=5))
    b = engine.generate(prompts, sampled(seed=5))
    assert [[r.token_ids for r in g.responses] for g in a] == [[r.token_ids for r in g.responses] for g in b]
    c = engine.generate(prompts[1:2], sampled(seed=0), seeds=[11])
    d = engine.generate(prompts[:2], sampled(seed=0), seeds=[99, 11])
    assert [r.token_ids for r in c[0].responses] == [r.token_ids for r in d[1].responses]


def test_at_another_temperature_processed_logprobs_are_the_tempered_policys_over_the_samplable_tokens(
        model, tokenizer, prompts) -> None:
    assert logprobs_mode(1.0) == "raw_logprobs" and logprobs_mode(0.7) == "processed_logprobs"
    engine = engine_for(model, tokenizer, mode=logprobs_mode(0.7))
    engine.sync_weights(model, version=0)
    prompt = prompts[0]
    response = engine.generate([prompt], sampled(seed=2, temperature=0.7))[0].responses[0]
    ids = torch.tensor([response.token_ids])
    full = torch.cat([prompt["input_ids"], ids], dim=1)
    media = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=torch.cat(
            [prompt["mm_token_type_ids"], torch.zeros_like(ids)], dim=1), **media).logits[0, -ids.shape[1] - 1 : -1]
    tempered = logits / 0.7
    banned = torch.tensor(engine.banned_token_ids)
    samplable = tempered.index_fill(1, banned, float("-inf")).log_softmax(-1).gather(1, ids.T).view(-1)
    whole = tempered.log_softmax(-1).gather(1, ids.T).view(-1)
    got = torch.tensor(response.logprobs)
    # vLLM's processed log-probs: softmax(logits / T) renormalised over the tokens it may sample (the vision
    # tokens carry a logit bias of -100); the contract's are over the whole vocabulary. They differ by
    # log(1 - p(vision tokens)): 0.02 nats on this random model, ~0 for a trained one.
    assert torch.allclose(got, samplable, atol=1e-4, rtol=0)
    assert (got - whole).min() > 1e-3


def test_sleep_mode_releases_the_weights_and_the_next_sync_restores_them(model, tokenizer, prompts) -> None:
    engine = engine_for(model, tokenizer, sleep=True)
    engine.sync_weights(model, version=0)
    assert engine.llm.calls == ["wake_up['weights']", "apply_model", "wake_up['kv_cache']", "reset_prefix_cache"]
    engine.release()
    assert engine.llm.calls[-1] == "sleep2" and engine.synced_version is None
    with pytest.raises(RuntimeError, match="before sync_weights"):
        engine.generate(prompts[:1], sampled(1))
    engine.sync_weights(model, version=0)  # the same version, but the weights were dropped
    assert_logprobs_match(model, prompts[:1], engine.generate(prompts[:1], sampled(seed=6)))


def test_sampling_params_use_vllms_names_and_ban_the_vision_tokens(model, tokenizer) -> None:
    engine = engine_for(model, tokenizer)
    params = engine.sampling_params(SamplingParams(num_generations=4, temperature=0.9, top_p=0.8, max_new_tokens=7,
                                                   stop_strings=("</answer>",), repetition_penalty=1.05), seed=3)
    assert (params.n, params.temperature, params.top_p, params.max_tokens, params.seed, params.logprobs) == \
        (4, 0.9, 0.8, 7, 3, 0)
    assert params.stop == ["</answer>"] and params.include_stop_str_in_output and params.repetition_penalty == 1.05
    assert set(params.stop_token_ids) == set(engine.eos_token_ids)
    assert set(params.logit_bias) == set(engine.banned_token_ids) and model.config.video_token_id in params.logit_bias
    greedy = engine.sampling_params(SamplingParams(num_generations=1, temperature=1.0, top_p=0.5, max_new_tokens=3,
                                                   greedy=True), seed=0)
    assert greedy.temperature == 0.0 and greedy.top_p == 1.0


@pytest.mark.parametrize(("finish", "stop", "expected"), [
    ("stop", "</answer>", "stop"), ("stop", 151645, "eos"), ("stop", None, "eos"), ("length", None, "length")])
def test_vllm_finish_reasons_map_onto_the_contract(finish, stop, expected) -> None:
    assert finish_reason(SimpleNamespace(finish_reason=finish, stop_reason=stop)) == expected


def test_an_aborted_response_is_an_error_not_a_silent_eos() -> None:
    with pytest.raises(RuntimeError, match="'abort'"):
        finish_reason(SimpleNamespace(finish_reason="abort", stop_reason=None))


def test_a_model_without_the_qwen_vl_vision_api_is_refused(tokenizer) -> None:
    with pytest.raises(ValueError, match="Qwen2-VL / Qwen2.5-VL"):
        VLLMRolloutEngine(FakeLLM(torch.nn.Linear(2, 2), tokenizer), FakeSamplingParams, torch.nn.Linear(2, 2),
                          tokenizer)


def test_visual_embeddings_are_the_policys_vision_tower_output(model, prompts) -> None:
    prompt = prompts[0]
    out = visual_embeddings(model, "video", prompt["pixel_values_videos"], prompt["video_grid_thw"])
    merge = model.config.vision_config.spatial_merge_size
    assert out.shape == (int(prompt["video_grid_thw"].prod()) // merge**2, model.config.text_config.hidden_size)


def test_second_per_grid_ts_is_sent_only_for_frame_rates_vllm_would_not_assume(model, tokenizer, prompts) -> None:
    at_2fps = {**prompts[0], "second_per_grid_ts": torch.tensor([1.0])}
    at_1fps = {**prompts[0], "second_per_grid_ts": torch.tensor([2.0])}
    assert "second_per_grid_ts" not in vllm_request(model, at_2fps, "p")["multi_modal_data"]["video"]
    assert torch.equal(vllm_request(model, at_1fps, "p")["multi_modal_data"]["video"]["second_per_grid_ts"],
                       torch.tensor([2.0]))
    engine = engine_for(model, tokenizer)
    engine.sync_weights(model, version=0)
    assert_logprobs_match(model, [at_1fps], engine.generate([at_1fps], sampled(seed=8)))


def test_the_colocated_environment_fills_only_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from veripo.rollout.vllm_engine import colocated_environment

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    colocated_environment(0, 1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "10.0.0.1")
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536


def test_the_bench_check_measures_the_gap_and_catches_a_stale_engine(model, tokenizer, prompts) -> None:
    from bench.engine_logprob_check import logprob_gaps

    policy = copy.deepcopy(model)
    engine = engine_for(policy, tokenizer)
    engine.sync_weights(policy, version=0)
    assert float(logprob_gaps(policy, prompts, engine.generate(prompts, sampled(seed=9)), 1.0).max()) < 1e-4
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = engine.generate(prompts, sampled(seed=9))  # no sync: the bench must see it
    assert float(logprob_gaps(policy, prompts, stale, 1.0).max()) > 1e-3


def test_a_policy_with_lora_adapters_is_refused_until_the_push_merges_them(model, tokenizer) -> None:
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LoRA adapters is not supported yet"):
        VLLMRolloutEngine(FakeLLM(model, tokenizer), FakeSamplingParams, adapted, tokenizer)
