"""What trains is what the goldens test: one real GRPO step's loss (every registered policy loss and
aggregation) and one real DPO step's loss equal the registry functions (``policy_loss``, ``dpo_loss``) applied
to the whole step's tensors at once. The recipes backpropagate each group's share; the shares must add up.

A spy wraps the registry function the recipe module calls: it records the tensors of every call, so the test
fails if a recipe computes its loss inline (no call recorded) or splits it into shares that do not add up."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import veripo.recipes.dpo as dpo_recipe
import veripo.recipes.grpo as grpo_recipe
from veripo.algos.dpo import PairNorms, dpo_loss
from veripo.algos.policy_loss import LOSS_AGGREGATIONS, POLICY_LOSSES, policy_loss
from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.records import Pair, reference_completion
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run
from veripo.rewards.registry import REWARDS, register_reward

pytestmark = pytest.mark.slow
MAX_NEW_TOKENS = 12

def digit_share(completion: str, sample: object) -> float:
    """Varies within every group of an untrained model's rollouts, so advantages are not all zero."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.fixture(autouse=True)
def digit_share_reward():
    """Registered for these tests only (the registry's own tests check every registered reward)."""
    register_reward("test_digit_share")(digit_share)
    yield
    REWARDS.pop("test_digit_share", None)


def padded_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def base_config(tmp_path: Path, *overrides: str) -> RunConfig:
    return load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu", "media.max_frames=4",
        "media.max_pixels=3136", *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", n=4, seed=5, kinds=("video", "image"),
                          size=56, frames=(4, 4))


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize("loss_type", POLICY_LOSSES.names())
def test_a_grpo_step_is_the_registry_policy_loss(tmp_path, data_dir, monkeypatch, loss_type, loss_agg):
    calls = []

    def spy(log_prob, old_log_prob, advantages, response_mask, **kwargs):
        loss, metrics = policy_loss(log_prob, old_log_prob, advantages, response_mask, **kwargs)
        calls.append((log_prob.detach(), old_log_prob, advantages, response_mask, kwargs))
        return loss, metrics

    monkeypatch.setattr(grpo_recipe, "policy_loss", spy)
    sample_and_score = grpo_recipe.sample_and_score

    def stale_sampler(*args, **kwargs):  # old log-probs off the current policy (as after earlier steps), so the
        groups = sample_and_score(*args, **kwargs)  # ratios differ from 1, the clip acts and the loss is not ~0
        noise = torch.Generator().manual_seed(7)
        for g in groups:
            g.logprobs = [[x + 0.3 * float(torch.randn((), generator=noise)) for x in row] for row in g.logprobs]
        return groups

    monkeypatch.setattr(grpo_recipe, "sample_and_score", stale_sampler)
    cfg = base_config(tmp_path, "rollout.num_generations=4", f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
                      "rollout.temperature=1.0", "rewards.extra=[test_digit_share]", "grpo.rollout_batch_size=2",
                      "grpo.global_batch_size=8", "grpo.max_steps=1", "grpo.lr=1e-3",
                      f"grpo.policy_loss={loss_type}", f"grpo.loss_agg={loss_agg}", "grpo.micro_batch_size=3")
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data_dir)),), stages=(Stage(name="grpo", kind="grpo"),))
    root = run(cfg, show_progress=False).root

    rows = read_jsonl(root / "stages" / "00-grpo" / "metrics.jsonl")
    assert len(rows) == 1 and calls, "the recipe did not call the registry's policy_loss"
    assert all(c[4]["loss_type"] == loss_type and c[4]["loss_agg_mode"] == loss_agg for c in calls)
    logp, old, adv, mask = (padded_cat([c[i] for c in calls]) if i != 2 else torch.cat([c[2] for c in calls])
                            for i in range(4))
    assert adv.abs().sum() > 0, "all advantages are zero: the test would not see the loss"
    expected, _ = policy_loss(logp, old, adv, mask, loss_type=loss_type, loss_agg_mode=loss_agg,
                              norm_constant=float(MAX_NEW_TOKENS))
    assert len(logp) == 8  # 2 questions x 4 responses, in micro-batches of 3 within each group
    assert abs(float(expected)) > 1e-3, float(expected)
    assert rows[0]["loss"] == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("nll_coef", [0.0, 1.0])
def test_a_dpo_step_is_the_registry_dpo_loss(tmp_path, data_dir, monkeypatch, nll_coef):
    calls = []

    def spy(chosen, rejected, ref_chosen, ref_rejected, **kwargs):
        out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, **kwargs)
        calls.append((chosen.detach(), rejected.detach(), ref_chosen, ref_rejected, kwargs))
        return out

    monkeypatch.setattr(dpo_recipe, "dpo_loss", spy)
    samples = load_samples(data_dir).samples
    pairs_path = tmp_path / "pairs.jsonl"
    with JsonlWriter(pairs_path) as writer:
        for s in samples:  # two pairs per question: they share one prompt pass, in micro-batches of one pair
            for k, wrong in enumerate(["9", "x"]):
                writer.write(Pair(id=f"{s.id}/p{k}", sample_id=s.id, pair_type="consistency",
                                  chosen=reference_completion(s), rejected=f"<think>no</think><answer>{wrong}</answer>",
                                  reasons=["test"]))
    cfg = base_config(tmp_path, "dpo.lr=1e-3", "dpo.global_batch_size=8", "dpo.epochs=1", "dpo.beta=0.3",
                      f"dpo.nll_coef={nll_coef}", "dpo.micro_batch_size=1")
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data_dir)),), stages=(Stage(name="dpo", kind="dpo"),))
    root = run(cfg, inputs={"pairs": pairs_path}, show_progress=False).root

    rows = read_jsonl(root / "stages" / "00-dpo" / "metrics.jsonl")
    assert len(rows) == 1 and len(calls) == 8, (len(rows), len(calls))  # 8 pairs, one per micro-batch
    chosen, rejected, ref_chosen, ref_rejected = (torch.cat([c[i] for c in calls]) for i in range(4))
    assert all(c[4]["loss_type"] == "sigmoid" and c[4]["beta"] == 0.3 for c in calls)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "base-model")
    pairs = read_jsonl(pairs_path, Pair)
    chosen_tokens = sum(len(dpo_recipe.pair_token_ids(tokenizer, p)[0]) for p in pairs)
    expected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3, nll_coef=nll_coef,
                        norms=PairNorms(pairs=8.0, chosen_tokens=float(chosen_tokens)))
    assert rows[0]["loss"] == pytest.approx(float(expected.loss), rel=1e-5, abs=1e-7)
    if nll_coef == 0.0:  # without the NLL term, the whole-batch mean of the plain API
        plain = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
        assert rows[0]["loss"] == pytest.approx(float(plain.loss), rel=1e-5, abs=1e-7)
