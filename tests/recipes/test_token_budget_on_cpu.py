"""Token-budget micro-batches (``grpo.max_tokens_per_micro_batch``, ``dpo.max_tokens_per_micro_batch``): the
plan (``veripo.models.micro_batches``) on hand cases, and a real GRPO and DPO step whose gradient with a budget
equals the count-based path's to 1e-6 in fp32, a response over the budget running alone and counted.

The responses of a group are cut to different lengths, so micro-batches of different sizes hold different
token counts: a loss normalised per micro-batch (a mean of per-micro-batch token means) instead of by the
step's tokens gives a different gradient for the two plans, and these tests fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import veripo.recipes.dpo as dpo_recipe
import veripo.recipes.grpo as grpo_recipe
from veripo.config import ConfigError, DataSource, RunConfig, Stage, load
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.records import Pair
from veripo.data.synthetic import make_synthetic
from veripo.models.micro_batches import micro_batch_tokens, plan_micro_batches
from veripo.parallel.base import ParallelStrategy
from veripo.recipes.veripo import run
from veripo.rewards.registry import REWARDS, register_reward

LENGTHS = [12, 10, 8, 6, 4, 2]  # the GRPO group's responses are cut to these lengths


# -- the plan ----------------------------------------------------------------------------------------------------
def test_without_a_budget_the_plan_is_the_count_cut_in_order():
    assert plan_micro_batches(50, [5, 9, 1, 7, 3], size=2).chunks == [[0, 1], [2, 3], [4]]
    assert plan_micro_batches(50, [5, 9, 1], size=None).chunks == [[0, 1, 2]]
    assert plan_micro_batches(50, [5, 9, 1, 7], size=1, unit=2).chunks == [[0, 1], [2, 3]]


def test_a_budget_packs_longest_first_and_every_micro_batch_keeps_it():
    # shared prefix: prompt 20 + rows x longest; budget 40 -> [10, 9] (20 + 2 x 10), [8, 4] (20 + 2 x 8), [2, 1]
    plan = plan_micro_batches(20, [4, 10, 2, 8, 9, 1], max_tokens=40)
    assert plan.chunks == [[1, 4], [3, 0], [2, 5]] and plan.over_budget == 0
    # per sequence: rows x (prompt + longest): 2 x (20 + 10) = 60 > 40, so one row each but the shortest two
    plan = plan_micro_batches(20, [4, 10, 2, 8, 9, 1], max_tokens=44, shared_prefix=False)
    assert plan.chunks == [[1], [4], [3], [0], [2, 5]]
    for chunk in plan.chunks:
        assert micro_batch_tokens(20, len(chunk), max(([4, 10, 2, 8, 9, 1][r] for r in chunk)), False) <= 44


def test_both_limits_hold_when_both_are_given():
    lengths = [3, 3, 3, 3, 3]
    assert [len(c) for c in plan_micro_batches(10, lengths, max_tokens=100).chunks] == [5]
    assert [len(c) for c in plan_micro_batches(10, lengths, size=2, max_tokens=100).chunks] == [2, 2, 1]
    assert [len(c) for c in plan_micro_batches(10, lengths, size=4, max_tokens=19).chunks] == [3, 2]


def test_an_item_over_the_budget_runs_alone_and_is_counted():
    plan = plan_micro_batches(30, [40, 5, 50, 5], max_tokens=60)
    assert plan.over_budget == 2
    assert plan.chunks == [[2], [0], [1, 3]]


def test_pairs_stay_together():
    # rows 2i and 2i + 1 are a pair's chosen and rejected; a pair's width is its longer row
    plan = plan_micro_batches(10, [3, 9, 4, 4, 8, 1, 2, 2], max_tokens=10 + 4 * 9, unit=2)
    assert plan.chunks == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert all(c[i] % 2 == 0 and c[i + 1] == c[i] + 1 for c in plan.chunks for i in range(0, len(c), 2))
    with pytest.raises(ValueError, match="whole units"):
        plan_micro_batches(10, [1, 2, 3], max_tokens=50, unit=2)


@pytest.mark.parametrize("section", ["grpo", "dpo"])
@pytest.mark.parametrize("value", [0, -5])
def test_the_budget_key_is_validated_naming_it(section, value):
    with pytest.raises(ConfigError, match=rf"'{section}\.max_tokens_per_micro_batch'"):
        load(RunConfig, None, [f"{section}.max_tokens_per_micro_batch={value}"])


# -- a real step: the budget's gradient is the count path's --------------------------------------------------------
def digit_share(completion: str, sample: object) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.fixture(autouse=True)
def digit_share_reward():
    register_reward("test_budget_digit_share")(digit_share)
    yield
    REWARDS.pop("test_budget_digit_share", None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", n=2, seed=5, kinds=("image",), size=56)


@pytest.fixture
def gradients(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Every optimizer step's summed gradients, recorded where the strategy clips them."""
    recorded: list[dict[str, torch.Tensor]] = []
    clip = ParallelStrategy.clip_gradients

    def spy(self, max_grad_norm):
        recorded.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return clip(self, max_grad_norm)

    monkeypatch.setattr(ParallelStrategy, "clip_gradients", spy)
    return recorded


@pytest.fixture
def plans(monkeypatch) -> list[list[list[int]]]:
    """The micro-batches every backward call ran."""
    seen: list[list[list[int]]] = []
    for recipe in (grpo_recipe, dpo_recipe):
        original = recipe.micro_batch_plan

        def spy(*args, _original=original, **kwargs):
            plan = _original(*args, **kwargs)
            seen.append(plan.chunks)
            return plan

        monkeypatch.setattr(recipe, "micro_batch_plan", spy)
    return seen


def config(tmp_path: Path, name: str, data_dir: Path, kind: str, *overrides: str) -> RunConfig:
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / name}", "model.build_tiny=tiny", "model.device=cpu", "media.max_pixels=3136",
        "rollout.num_generations=6", "rollout.max_new_tokens=12", "rollout.stop_at_answer=false",
        "rewards.extra=[test_budget_digit_share]", "grpo.rollout_batch_size=1", "grpo.global_batch_size=6",
        "grpo.max_steps=1", "grpo.lr=1e-3", "grpo.loss_agg=token-mean", "dpo.lr=1e-3", "dpo.global_batch_size=4",
        "dpo.max_steps=1", *overrides])
    return dataclasses.replace(cfg, data=(DataSource(path=str(data_dir)),), stages=(Stage(name=kind, kind=kind),))


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    scale = max(float(g.abs().max()) for g in a.values())
    assert scale > 1e-4, f"gradients of {scale:.2g}: the comparison would prove nothing"
    for name, g in a.items():
        torch.testing.assert_close(b[name], g, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_a_grpo_step_with_a_token_budget_has_the_count_paths_gradient(tmp_path, data_dir, monkeypatch, gradients,
                                                                         plans):
    sample_and_score = grpo_recipe.sample_and_score

    def cut_lengths(*args, **kwargs):  # responses of different lengths, so micro-batches hold different tokens
        groups = sample_and_score(*args, **kwargs)
        for g in groups:
            g.token_ids = [ids[:n] for ids, n in zip(g.token_ids, LENGTHS)]
            g.logprobs = [lp[:n] for lp, n in zip(g.logprobs, LENGTHS)]
        return groups

    monkeypatch.setattr(grpo_recipe, "sample_and_score", cut_lengths)
    root = run(config(tmp_path, "count", data_dir, "grpo", "grpo.micro_batch_size=2"), show_progress=False).root
    prompt = read_jsonl(root / "stages" / "00-grpo" / "rollouts.jsonl")[0]["prompt_tokens"]
    # prompt + 10: the 12-token response alone is over it; the others pack as [10], [8], [6], [4, 2]
    root = run(config(tmp_path, "budget", data_dir, "grpo", f"grpo.max_tokens_per_micro_batch={prompt + 10}"),
               show_progress=False).root

    assert plans == [[[0, 1], [2, 3], [4, 5]], [[0], [1], [2], [3], [4, 5]]]
    assert len(gradients) == 2
    assert_same_gradients(gradients[0], gradients[1])
    row = read_jsonl(root / "stages" / "00-grpo" / "metrics.jsonl")[0]
    assert row["over_budget_micro_batches"] == 1 and row["trained_tokens"] == sum(LENGTHS)


@pytest.mark.slow
def test_a_dpo_step_with_a_token_budget_has_the_count_paths_gradient(tmp_path, data_dir, gradients, plans):
    samples = load_samples(data_dir).samples
    pairs = tmp_path / "pairs.jsonl"
    with JsonlWriter(pairs) as writer:  # two pairs per question, of different lengths
        for s in samples:
            for k, (chosen, rejected) in enumerate([("1 2 3 4 5 6 7 8 9", "no"), ("7", "x y")]):
                writer.write(Pair(id=f"{s.id}/p{k}", sample_id=s.id, pair_type="consistency", chosen=chosen,
                                  rejected=rejected, reasons=["test"]))
    run(config(tmp_path, "count", data_dir, "dpo", "dpo.micro_batch_size=2"), inputs={"pairs": pairs},
        show_progress=False)
    # a budget of one token: every pair is over it and runs alone (a micro-batch of its two rows), counted
    root = run(config(tmp_path, "budget", data_dir, "dpo", "dpo.max_tokens_per_micro_batch=1"), inputs={"pairs": pairs},
               show_progress=False).root

    assert plans[:2] == [[[0, 1, 2, 3]]] * 2  # the count path: both pairs of a question at once
    assert [sorted(p) for p in plans[2:]] == [[[0, 1], [2, 3]]] * 2  # the budget: pair by pair
    assert len(gradients) == 2
    assert_same_gradients(gradients[0], gradients[1])
    assert read_jsonl(root / "stages" / "00-dpo" / "metrics.jsonl")[0]["over_budget_micro_batches"] == 4
