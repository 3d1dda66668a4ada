"""Shared-prefix log-probs on a tiny model of every family (Qwen2.5-VL, Qwen3-VL, Qwen3.5: the ``family`` fixture)
with a video prompt: loss and every parameter gradient equal the per-sequence computation (fp32, relative 1e-4),
with micro-batches and gradient checkpointing; a prompt whose K/V is detached must fail the same check. Qwen3.5
falls back to the per-sequence forward (its linear-attention state is not keys and values): the shared-prefix
mechanism tests skip it, and a test shows that a K/V-only prompt pass cannot serve it."""

from __future__ import annotations

import pytest
import torch

from veripo.algos import logprobs as logprob_maths
from veripo.models import grouped_forward as lp
from veripo.algos.policy_loss import BatchNorms, policy_loss

RTOL = 1e-4


def needs_exact_shared_prefix(model):
    from veripo.models.families import family_of

    if not family_of(model).shared_prefix_exact:
        pytest.skip(f"{model.config.model_type}: the shared prefix falls back to per-sequence (no KV-only prompt pass)")


def grpo_loss_fn(old_log_probs, advantages, mask):
    """Token-mean clipped GRPO loss over the whole group; each micro-batch returns its share of it."""
    norms = BatchNorms.of(mask)

    def loss_fn(log_probs, entropy, rows):
        loss, _ = policy_loss(log_probs, old_log_probs[rows], advantages[rows], mask[rows], clip_high=0.28, norms=norms)
        return loss

    return loss_fn


def run_group(model, prompt, responses, **kwargs):
    """(loss, {parameter name: gradient}) of one GRPO group through ``backward_group``."""
    ids, mask = responses
    generator = torch.Generator().manual_seed(2)
    old = lp.response_log_probs(model, prompt, ids, mask).log_probs + 0.2 * torch.randn(ids.shape, generator=generator)
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.3])[:, None].expand_as(mask)
    model.zero_grad(set_to_none=True)
    stats = lp.backward_group(model, prompt, ids, mask, grpo_loss_fn(old, advantages, mask), **kwargs)
    return stats.loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worst_gradient_error(reference: dict, other: dict) -> float:
    """Largest ``|g - g_ref| / |g_ref|`` over all parameters; a missing gradient counts as zero."""
    worst = 0.0
    for name, expected in reference.items():
        got = other.get(name, torch.zeros_like(expected))
        worst = max(worst, ((got - expected).norm() / expected.norm().clamp(min=1e-30)).item())
    return worst


def assert_matches(reference, other):
    (loss_ref, grads_ref), (loss, grads) = reference, other
    assert loss.item() == pytest.approx(loss_ref.item(), rel=RTOL)
    assert set(grads) == set(grads_ref)
    assert worst_gradient_error(grads_ref, grads) < RTOL


@pytest.fixture
def reference(tiny_model, prompt, responses):
    return run_group(tiny_model, prompt, responses, shared_prefix=False)


def test_every_parameter_has_a_gradient_in_the_baseline(tiny_model, reference):
    _, grads = reference
    vision = [name for name in grads if ".visual." in f".{name}"]
    assert len(grads) == sum(1 for _ in tiny_model.parameters()) and vision


def test_shared_prefix_equals_per_sequence(tiny_model, prompt, responses, reference):
    assert_matches(reference, run_group(tiny_model, prompt, responses))


@pytest.mark.parametrize("micro_batch", [1, 3])
def test_shared_prefix_with_response_micro_batches(tiny_model, prompt, responses, reference, micro_batch):
    assert_matches(reference, run_group(tiny_model, prompt, responses, micro_batch=micro_batch))


def test_per_sequence_micro_batches_equal_per_sequence(tiny_model, prompt, responses, reference):
    assert_matches(reference, run_group(tiny_model, prompt, responses, shared_prefix=False, micro_batch=3))


def test_shared_prefix_with_gradient_checkpointing(tiny_model, prompt, responses, reference):
    tiny_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in lp.decoder_layers(tiny_model))
    assert_matches(reference, run_group(tiny_model, prompt, responses, micro_batch=2))
    # The flag that lets our read-only caches through checkpointing is put back afterwards.
    assert all("_can_checkpoint_with_cache" not in layer.__dict__ for layer in lp.decoder_layers(tiny_model))


def test_checkpointing_dropping_the_cache_is_caught(tiny_model, prompt, responses, monkeypatch):
    """The pitfall: transformers drops ``past_key_values`` in checkpointed layers; that must fail loudly."""
    from contextlib import nullcontext

    needs_exact_shared_prefix(tiny_model)
    tiny_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    monkeypatch.setattr(lp, "cache_kept_under_checkpointing", lambda layers: nullcontext())
    with pytest.raises(RuntimeError, match="did not write"):
        run_group(tiny_model, prompt, responses)


def test_reentrant_checkpointing_is_refused(tiny_model, prompt, responses):
    needs_exact_shared_prefix(tiny_model)
    tiny_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="non-reentrant"):
        run_group(tiny_model, prompt, responses)


def test_negative_control_detached_prompt_kv_fails_the_check(tiny_model, prompt, responses, reference):
    """The responses see the prompt's K/V but no gradient flows back through it: the check must catch that."""
    needs_exact_shared_prefix(tiny_model)
    ids, mask = responses
    tiny_model.zero_grad(set_to_none=True)
    state = lp._prompt_pass(tiny_model, lp._single_prompt(prompt), lp.PLAIN_PASSES)
    detached = state._replace(keys=[k.detach() for k in state.keys], values=[v.detach() for v in state.values])
    out = lp._continuation(tiny_model, detached, ids, mask, with_entropy=False, temperature=1.0,
                          passes=lp.PLAIN_PASSES)
    generator = torch.Generator().manual_seed(2)
    old = lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs + 0.2 * torch.randn(
        ids.shape, generator=generator
    )
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.3])[:, None].expand_as(mask)
    loss = grpo_loss_fn(old, advantages, mask)(out.log_probs, None, torch.arange(4))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}
    assert loss.item() == pytest.approx(reference[0].item(), rel=RTOL)  # forward is right ...
    error = worst_gradient_error(reference[1], grads)
    assert error > 0.1, error  # ... the gradients are not


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_no_grad_log_probs_equal_a_plain_forward(tiny_model, prompt, responses, temperature):
    ids, mask = responses
    prompt_len = prompt["input_ids"].shape[1]
    full = {
        "input_ids": torch.cat([prompt["input_ids"].expand(4, -1), ids], dim=1),
        "attention_mask": torch.cat([torch.ones(4, prompt_len, dtype=torch.long), mask.long()], dim=1),
        "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"].expand(4, -1), torch.zeros_like(ids)], dim=1),
        "pixel_values_videos": prompt["pixel_values_videos"].repeat(4, 1),
        "video_grid_thw": prompt["video_grid_thw"].repeat(4, 1),
    }
    with torch.no_grad():
        logits = tiny_model(**full).logits[:, prompt_len - 1 : -1] / temperature  # the sampling policy's
    expected = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1) * mask
    for shared_prefix in (True, False):
        for micro_batch in (None, 3):
            out = lp.response_log_probs(
                tiny_model, prompt, ids, mask, shared_prefix=shared_prefix, micro_batch=micro_batch, with_entropy=True,
                temperature=temperature,
            )
            torch.testing.assert_close(out.log_probs * mask, expected, rtol=1e-5, atol=1e-5)
            probs = logits.softmax(-1)
            entropy = -(probs * logits.log_softmax(-1)).sum(-1)
            torch.testing.assert_close(out.entropy * mask, entropy * mask, rtol=1e-5, atol=1e-5)
            assert not out.log_probs.requires_grad


def test_temperature_scales_the_trained_log_probs(tiny_model, prompt, responses):
    """backward_group at a temperature trains the same log-probs response_log_probs reports, and the
    gradients of both prompt paths agree; they differ from those at temperature 1."""
    ids, mask = responses
    at = {}
    for shared_prefix in (True, False):
        tiny_model.zero_grad(set_to_none=True)
        seen = []

        def loss_fn(logp, entropy, rows):
            seen.append(logp.detach())
            return (logp * mask[rows]).sum()

        lp.backward_group(tiny_model, prompt, ids, mask, loss_fn, shared_prefix=shared_prefix, temperature=0.6)
        at[shared_prefix] = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
        expected = lp.response_log_probs(tiny_model, prompt, ids, mask, temperature=0.6).log_probs
        torch.testing.assert_close(torch.cat(seen) * mask, expected * mask, rtol=1e-5, atol=1e-5)
    assert worst_gradient_error(at[False], at[True]) < RTOL
    tiny_model.zero_grad(set_to_none=True)
    lp.backward_group(tiny_model, prompt, ids, mask, lambda logp, e, rows: (logp * mask).sum())
    at_one = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert worst_gradient_error(at_one, at[True]) > 1e-2


def test_left_padded_prompt_gives_the_same_log_probs(tiny_model, prompt, responses):
    ids, mask = responses
    padded = dict(prompt)
    padded["input_ids"] = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt["input_ids"]], dim=1)
    padded["attention_mask"] = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt["attention_mask"]], dim=1)
    padded["mm_token_type_ids"] = torch.cat([torch.zeros(1, 2, dtype=torch.long), prompt["mm_token_type_ids"]], dim=1)
    expected = lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs
    torch.testing.assert_close(lp.response_log_probs(tiny_model, padded, ids, mask).log_probs, expected)


@pytest.mark.parametrize("prompt_fixture", ["image_prompt_inputs", "text_prompt_inputs"])
def test_image_and_text_only_prompts(tiny_model, responses, prompt_fixture, request):
    prompt = request.getfixturevalue(prompt_fixture)
    reference = run_group(tiny_model, prompt, responses, shared_prefix=False)
    assert_matches(reference, run_group(tiny_model, prompt, responses, micro_batch=3))


def test_chunked_logits_give_the_same_loss_and_gradients(tiny_model, prompt, responses, reference, monkeypatch):
    monkeypatch.setattr(logprob_maths, "LOGITS_CHUNK_ELEMENTS", 5 * tiny_model.lm_head.out_features)  # 5 tokens a chunk
    assert_matches(reference, run_group(tiny_model, prompt, responses, micro_batch=3))
    ids, mask = responses
    chunked = lp.response_log_probs(tiny_model, prompt, ids, mask, with_entropy=True)
    monkeypatch.undo()
    whole = lp.response_log_probs(tiny_model, prompt, ids, mask, with_entropy=True)
    torch.testing.assert_close(chunked.log_probs, whole.log_probs)
    torch.testing.assert_close(chunked.entropy, whole.entropy)


def test_single_token_responses(tiny_model, prompt):
    ids, mask = torch.tensor([[30], [40]]), torch.ones(2, 1)
    shared = lp.group_log_probs(tiny_model, prompt, ids, mask).log_probs
    torch.testing.assert_close(shared, lp.group_log_probs(tiny_model, prompt, ids, mask, shared_prefix=False).log_probs)


def test_bad_inputs_are_named(tiny_model, prompt, responses):
    ids, mask = responses
    two = dict(prompt, input_ids=prompt["input_ids"].repeat(2, 1))
    with pytest.raises(ValueError, match=r"\[1, P\]"):
        lp.response_log_probs(tiny_model, two, ids, mask)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        lp.response_log_probs(tiny_model, {k: v for k, v in prompt.items() if k != "mm_token_type_ids"}, ids, mask)
    with pytest.raises(ValueError, match="response_mask"):
        lp.response_log_probs(tiny_model, prompt, ids, mask[:, :3])
    with pytest.raises(ValueError, match="micro_batch"):
        lp.response_log_probs(tiny_model, prompt, ids, mask, micro_batch=0)


def test_the_shared_prefix_runs_once_where_exact_and_falls_back_where_not(tiny_model, prompt, responses, monkeypatch):
    """Qwen2.5-VL and Qwen3-VL run one prompt pass per group; Qwen3.5 runs none (per-sequence fallback)."""
    from veripo.models.families import family_of

    calls = []
    real = lp._prompt_pass
    monkeypatch.setattr(lp, "_prompt_pass", lambda *a: calls.append(1) or real(*a))
    ids, mask = responses
    lp.response_log_probs(tiny_model, prompt, ids, mask, micro_batch=2)
    assert len(calls) == (1 if family_of(tiny_model).shared_prefix_exact else 0)


@pytest.mark.parametrize("family", ["qwen3.5"])
def test_qwen3_5_linear_attention_cannot_use_a_key_value_prompt_pass(tiny_model, prompt):
    """Why Qwen3.5 falls back: its linear-attention layers ask the cache for a recurrent state, which a cache of
    keys and values does not hold; forcing the shared-prefix prompt pass fails."""
    assert "linear_attention" in tiny_model.config.text_config.layer_types
    with pytest.raises(ValueError, match="recurrent state"):
        lp._prompt_pass(tiny_model, lp._single_prompt(prompt), lp.PLAIN_PASSES)
