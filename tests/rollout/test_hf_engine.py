"""The prefill-once transformers engine on a tiny Qwen2.5-VL with video prompts."""

from __future__ import annotations

import pytest
import torch

from veripo.rollout import HFRolloutEngine, RolloutEngine, SamplingParams


def greedy(max_new_tokens=24, **kw):
    return SamplingParams(num_generations=2, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                          stop_strings=(), greedy=True, **kw)


def sampled(seed, G=4, max_new_tokens=16, **kw):
    return SamplingParams(num_generations=G, temperature=kw.pop("temperature", 1.0), top_p=kw.pop("top_p", 0.9),
                          max_new_tokens=max_new_tokens, seed=seed, **kw)


def hf_greedy(model, prompt, engine, max_new_tokens, **kw):
    out = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False,
                         suppress_tokens=engine.banned_token_ids, eos_token_id=engine.eos_token_ids, **kw)
    tokens = out[0, prompt["input_ids"].shape[1]:].tolist()
    for i, t in enumerate(tokens):  # HF pads after EOS; the engine returns the EOS and nothing after
        if t in engine.eos_token_ids:
            return tokens[: i + 1]
    return tokens


def teacher_forced_logprobs(model, prompt, token_ids, temperature=1.0):
    """Log-probs of `token_ids` after `prompt` from one full forward of prompt + response, positions by HF,
    under softmax(logits / temperature)."""
    response = torch.tensor([token_ids])
    full = torch.cat([prompt["input_ids"], response], dim=1)
    mm = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    media = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=mm, **media).logits
    P = prompt["input_ids"].shape[1]
    return torch.log_softmax(logits[0, P - 1 : -1].float() / temperature, dim=-1).gather(1, response.T).view(-1)


def test_engine_satisfies_the_protocol(model, tokenizer):
    assert isinstance(HFRolloutEngine(model, tokenizer), RolloutEngine)


def test_greedy_equals_hf_generate_and_logprobs_equal_teacher_forcing(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer)
    for prompt in prompts:
        group = engine.generate([prompt], greedy(24))[0]
        expected = hf_greedy(model, prompt, engine, 24)
        assert group.prompt_tokens == prompt["input_ids"].shape[1]
        for response in group.responses:
            assert response.token_ids == expected
            assert len(response.logprobs) == len(response.token_ids)
            tf = teacher_forced_logprobs(model, prompt, response.token_ids)
            assert torch.allclose(torch.tensor(response.logprobs), tf, atol=1e-4, rtol=0)


def test_greedy_with_repetition_penalty_equals_hf_generate(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer)
    group = engine.generate([prompts[0]], greedy(32, repetition_penalty=1.5))[0]
    expected = hf_greedy(model, prompts[0], engine, 32, repetition_penalty=1.5)
    assert group.responses[0].token_ids == expected
    assert group.responses[0].token_ids != engine.generate([prompts[0]], greedy(32))[0].responses[0].token_ids


def test_sampled_logprobs_are_the_sampling_policy_logprobs(model, tokenizer, prompts):
    """The returned log-probs are those of softmax(logits / temperature), the policy GRPO trains (as TRL and
    verl); top-p and masking shape the sampling only."""
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=3)
    groups = engine.generate(prompts, sampled(seed=5, temperature=0.7, top_p=0.8))
    for prompt, group in zip(prompts, groups):
        for response in group.responses:
            tf = teacher_forced_logprobs(model, prompt, response.token_ids, temperature=0.7)
            assert torch.allclose(torch.tensor(response.logprobs), tf, atol=1e-4, rtol=0)
            at_one = teacher_forced_logprobs(model, prompt, response.token_ids)
            assert not torch.allclose(torch.tensor(response.logprobs), at_one, atol=1e-3, rtol=0)


def test_batched_questions_match_one_at_a_time(model, tokenizer, prompts):
    alone = HFRolloutEngine(model, tokenizer, max_batch_questions=1)
    together = HFRolloutEngine(model, tokenizer, max_batch_questions=3)
    for params in (greedy(20), sampled(seed=11)):
        one = alone.generate(prompts, params)
        many = together.generate(prompts, params)
        for a, b in zip(one, many):
            assert a.prompt_tokens == b.prompt_tokens
            for ra, rb in zip(a.responses, b.responses):
                assert ra.token_ids == rb.token_ids
                assert ra.finish_reason == rb.finish_reason
                assert torch.allclose(torch.tensor(ra.logprobs), torch.tensor(rb.logprobs), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=2)
    tokens = lambda groups: [r.token_ids for g in groups for r in g.responses]
    first = tokens(engine.generate(prompts, sampled(seed=3)))
    assert first == tokens(engine.generate(prompts, sampled(seed=3)))
    assert first != tokens(engine.generate(prompts, sampled(seed=4)))
    torch.manual_seed(0)
    unseeded = tokens(engine.generate(prompts, sampled(seed=None)))
    torch.manual_seed(0)
    assert unseeded == tokens(engine.generate(prompts, sampled(seed=None)))


def test_the_g_responses_of_a_group_differ(model, tokenizer, prompts):
    group = HFRolloutEngine(model, tokenizer).generate([prompts[0]], sampled(seed=0, G=8))[0]
    assert len(group.responses) == 8
    assert len({tuple(r.token_ids) for r in group.responses}) == 8


def add_logit_bias(model, token_ids, bias):
    """Raise the lm_head output of `token_ids` by `bias` (returns the hook handle)."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_ids] += bias
        return output
    return model.lm_head.register_forward_hook(hook)


def test_vision_tokens_are_never_sampled_even_when_likely(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=3)
    vision = engine.banned_token_ids
    handle = add_logit_bias(model, vision, 4.0)
    try:
        # Negative control: unmasked sampling under the same bias picks vision tokens often.
        torch.manual_seed(0)
        out = model.generate(**prompts[1], do_sample=True, max_new_tokens=16, num_return_sequences=8)
        assert torch.isin(out[:, prompts[1]["input_ids"].shape[1]:], torch.tensor(vision)).any()
        for seed in range(8):
            for group in engine.generate(prompts, sampled(seed=seed, G=8, top_p=1.0)):
                for response in group.responses:
                    assert not set(response.token_ids) & set(vision)
    finally:
        handle.remove()


def script_model(model, tokenizer, text_then_tokens):
    """Force the model to emit a fixed token sequence (one forced token per lm_head call)."""
    script = []
    for piece in text_then_tokens:
        script += [tokenizer.convert_tokens_to_ids(piece)] if piece.startswith("<|") else tokenizer(piece)["input_ids"]
    calls = iter(range(10_000))

    def hook(module, inputs, output):
        forced = torch.full_like(output, -1e4)
        forced[..., script[min(next(calls), len(script) - 1)]] = 0.0
        return forced
    return script, model.lm_head.register_forward_hook(hook)


def test_stops_at_answer_close_and_keeps_the_completing_token(model, tokenizer, prompts):
    script, handle = script_model(model, tokenizer, ["<think>x</think><answer>B</answer>", "junk after"])
    try:
        group = HFRolloutEngine(model, tokenizer).generate([prompts[0]], sampled(seed=0, G=3, max_new_tokens=64))[0]
    finally:
        handle.remove()
    n = len(tokenizer("<think>x</think><answer>B</answer>")["input_ids"])
    for response in group.responses:
        assert response.finish_reason == "stop"
        assert response.token_ids == script[:n]
        assert response.text == "<think>x</think><answer>B</answer>"
        assert len(response.logprobs) == n


def test_stops_at_eos_and_at_length(model, tokenizer, prompts):
    script, handle = script_model(model, tokenizer, ["<answer>", "<|im_end|>", "more"])
    try:
        engine = HFRolloutEngine(model, tokenizer)
        eos = engine.generate([prompts[0]], sampled(seed=0, G=2, max_new_tokens=32))[0].responses[0]
    finally:
        handle.remove()
    assert eos.finish_reason == "eos"
    assert eos.token_ids == script[: len("<answer>") + 1]
    assert eos.text == "<answer>"  # the EOS token is kept in token_ids, dropped from the text
    length = engine.generate([prompts[0]], greedy(5))[0].responses[0]
    assert (length.finish_reason, len(length.token_ids)) == ("length", 5)


def test_stops_at_a_string_the_model_really_produces(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer)
    free = engine.generate([prompts[2]], greedy(24))[0].responses[0]
    stop = free.text[6:9]
    assert len(stop) == 3
    params = SamplingParams(2, 1.0, 1.0, 24, stop_strings=(stop,), greedy=True)
    stopped = engine.generate([prompts[2]], params)[0].responses[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text.endswith(stop) and stop not in stopped.text[:-1]
    assert free.token_ids[: len(stopped.token_ids)] == stopped.token_ids


def test_vision_tower_and_llm_prefill_run_once_per_question(model, tokenizer, prompts):
    patches, prefill_batches = [], []
    vis = model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
    llm = model.model.language_model.register_forward_hook(
        lambda m, args, kwargs, out: prefill_batches.append(kwargs["inputs_embeds"].shape[0])
        if kwargs["inputs_embeds"].shape[1] > 1 else None,
        with_kwargs=True,
    )
    try:
        HFRolloutEngine(model, tokenizer, max_batch_questions=2).generate(prompts, sampled(seed=0, G=8))
    finally:
        vis.remove()
        llm.remove()
    # Two prefill batches (2 + 1 questions); each video's patches enter the vision tower exactly once.
    assert patches == [
        prompts[0]["pixel_values_videos"].shape[0] + prompts[1]["pixel_values_videos"].shape[0],
        prompts[2]["pixel_values_videos"].shape[0],
    ]
    assert prefill_batches == [2, 1]


def test_malformed_prompt_is_rejected_with_its_index(model, tokenizer, prompts):
    engine = HFRolloutEngine(model, tokenizer)
    bad = {k: v for k, v in prompts[0].items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="prompt 1: missing 'mm_token_type_ids'"):
        engine.generate([prompts[0], bad], greedy(2))
    with pytest.raises(ValueError, match="get_rope_index"):
        HFRolloutEngine(torch.nn.Linear(2, 2), tokenizer)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(num_generations=2, temperature=1.0, top_p=0.0, max_new_tokens=4)


def test_qwen2_vl_greedy_equals_hf_generate(tokenizer):
    from tiny_vl import tiny_qwen2_vl, video_prompt

    model = tiny_qwen2_vl(tokenizer)
    prompts = [video_prompt(tokenizer, model.config, q, frames=f, side=s, seed=f)
               for q, f, s in (("Why?", 4, 16), ("What colour is it?", 2, 8))]
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=2)
    groups = engine.generate(prompts, greedy(16))
    for prompt, group in zip(prompts, groups):
        assert group.responses[0].token_ids == hf_greedy(model, prompt, engine, 16)
        tf = teacher_forced_logprobs(model, prompt, group.responses[0].token_ids)
        assert torch.allclose(torch.tensor(group.responses[0].logprobs), tf, atol=1e-4, rtol=0)


def test_image_and_video_prompts_batched_together(model, tokenizer, prompts):
    from tiny_vl import image_prompt

    mixed = [image_prompt(tokenizer, model.config, "Describe it.", side=16, seed=7), prompts[1],
             image_prompt(tokenizer, model.config, "Is there a dot? Answer yes or no.", side=8, seed=8)]
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=3)
    for prompt, group in zip(mixed, engine.generate(mixed, greedy(16))):
        assert group.responses[0].token_ids == hf_greedy(model, prompt, engine, 16)


def test_text_only_prompt(model, tokenizer):
    ids = torch.tensor([tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]])
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}
    engine = HFRolloutEngine(model, tokenizer)
    assert engine.generate([prompt], greedy(12))[0].responses[0].token_ids == hf_greedy(model, prompt, engine, 12)


def test_first_tokens_follow_the_processed_distribution(model, tokenizer, prompts):
    """First tokens stay inside the top-p nucleus of the prompt's next-token distribution, and their
    frequencies match it (a logit bias on three tokens makes it peaked enough for 512 draws to tell)."""
    from veripo.rollout.sampling import next_token_distribution

    engine = HFRolloutEngine(model, tokenizer)
    prompt = prompts[0]
    favoured = torch.tensor([40, 50, 60])
    handle = add_logit_bias(model, favoured, torch.tensor([3.5, 3.0, 2.5]))
    try:
        with torch.no_grad():
            logits = model(**prompt).logits[:, -1].float()
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool)
        banned[engine.banned_token_ids] = True
        probs = next_token_distribution(logits, banned=banned, seen=None, repetition_penalty=1.0,
                                        temperature=0.7, top_p=0.9).softmax(-1)[0]
        firsts = torch.tensor([r.token_ids[0] for seed in range(8) for r in engine.generate(
            [prompt], sampled(seed=seed, G=64, max_new_tokens=1, temperature=0.7, top_p=0.9))[0].responses])
    finally:
        handle.remove()
    assert probs[favoured].sum() > 0.5 and 0 < int((probs > 0).sum()) < probs.numel() - 5
    assert bool((probs[firsts] > 0).all())
    empirical = torch.bincount(firsts, minlength=probs.numel()).float() / len(firsts)
    assert (empirical - probs).abs().max() < 0.07  # about 3 standard errors at 512 draws
