"""Advantages, clipped policy loss, aggregation and KL against verl 0.9.1's goldens and hand-computed values."""

from __future__ import annotations

import json

import pytest
import torch

from veripo.algos.advantages import ADVANTAGES, group_advantages
from veripo.algos.kl import KL_ESTIMATORS, kl_divergence, kl_loss
from veripo.algos.policy_loss import LOSS_AGGREGATIONS, BatchNorms, aggregate_loss, clipped_policy_loss, policy_loss


@pytest.fixture(scope="module")
def goldens(shared_data):
    return json.loads((shared_data / "golden" / "verl_core_algos_goldens.json").read_text())["cases"]


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("norm_std, estimator", [(True, "grpo"), (False, "drgrpo")])
def test_grpo_advantages_match_verl(goldens, norm_std, estimator):
    case = goldens[f"grpo_outcome_advantage_norm_std={norm_std}"]
    inputs = case["inputs"]
    advantages = group_advantages(tensor(inputs["scores"]), inputs["index"], estimator=estimator, eps=inputs["epsilon"])
    torch.testing.assert_close(advantages, tensor(case["per_sequence_advantage"]), rtol=1e-5, atol=1e-6)
    token_level = advantages[:, None] * tensor(inputs["response_mask"])
    torch.testing.assert_close(token_level, tensor(case["advantages"]), rtol=1e-5, atol=1e-6)


def test_matrix_input_equals_flat_input_with_index():
    rewards = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    for name in ADVANTAGES.names():
        flat = group_advantages(rewards.reshape(-1), ["a", "a", "a", "b", "b", "b"], estimator=name)
        torch.testing.assert_close(group_advantages(rewards, estimator=name).reshape(-1), flat)


def test_rloo_is_reward_minus_mean_of_others():
    rewards = torch.tensor([1.0, 0.0, 0.5, 3.0, 7.0])
    advantages = group_advantages(rewards, [0, 0, 0, 1, 2], estimator="rloo")
    expected = torch.tensor([1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5, 3.0, 7.0])  # singletons keep their reward (verl)
    torch.testing.assert_close(advantages, expected)


def test_all_equal_group_has_zero_advantage_and_no_nan():
    for name in ADVANTAGES.names():
        advantages = group_advantages(torch.full((2, 4), 0.7), estimator=name)
        assert torch.isfinite(advantages).all() and advantages.abs().max() < 1e-5, name


def test_bad_advantage_inputs_name_the_problem():
    with pytest.raises(ValueError, match="index has 2 labels"):
        group_advantages(torch.zeros(3), ["a", "b"])
    with pytest.raises(KeyError, match="expected one of"):
        group_advantages(torch.zeros(2, 2), estimator="nope")


@pytest.mark.parametrize("estimator", ["k1", "abs", "k2", "k3"])
def test_kl_estimators_match_verl(goldens, estimator):
    case = goldens["kl_penalty"]
    value = kl_divergence(tensor(case["logprob"]), tensor(case["ref_logprob"]), estimator)
    torch.testing.assert_close(value, tensor(case[estimator]), rtol=1e-5, atol=1e-6)
    assert {"kl", "mse", "low_var_kl"} <= set(KL_ESTIMATORS.names())


def test_kl_loss_coefficient_and_zero_default():
    log_prob, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    scaled, raw = kl_loss(log_prob, ref, mask, coef=0.5, estimator="k1")
    assert raw.item() == pytest.approx((0.5 - 1.0) / 2) and scaled.item() == pytest.approx(-0.125)
    assert kl_loss(log_prob, None, mask)[0].item() == 0.0
    with pytest.raises(ValueError, match="no reference"):
        kl_loss(log_prob, None, mask, coef=0.1)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_clipped_policy_loss_matches_verl(goldens, mode):
    case = goldens["compute_policy_loss"]
    loss, metrics = policy_loss(
        tensor(case["log_prob"]),
        tensor(case["old_log_prob"]),
        tensor(case["advantages"]),
        tensor(case["response_mask"]),
        loss_agg_mode=mode,
        clip_low=case["cliprange"],
        clip_high=case["cliprange"],
        dual_clip=case["clip_ratio_c"],
    )
    expected = case[mode]
    assert loss.item() == pytest.approx(expected["pg_loss"], rel=1e-5)
    assert metrics["clip_fraction"].item() == pytest.approx(expected["pg_clipfrac"], rel=1e-5)
    assert metrics["approx_kl"].item() == pytest.approx(expected["ppo_kl"], rel=1e-5)
    assert metrics["clip_fraction_lower"].item() == pytest.approx(expected["pg_clipfrac_lower"], abs=1e-7)


def test_clip_high_and_dual_clip_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 10.0, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    out = clipped_policy_loss(new, old, advantages, torch.ones(1, 4), clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    # A>0, r=1.5: -min(1.5, 1.28); A<0, r=1.5: -(-1.5); A<0, r=10: dual clip caps at 3; A>0, r=0.5: -0.5.
    torch.testing.assert_close(out.per_token_loss, torch.tensor([[-1.28, 1.5, 3.0, -0.5]]))
    assert out.metrics["clip_fraction"].item() == pytest.approx(0.25)
    assert out.metrics["clip_fraction_lower"].item() == pytest.approx(0.25)
    without_dual = clipped_policy_loss(new, old, advantages, torch.ones(1, 4), dual_clip=None)
    assert without_dual.per_token_loss[0, 2].item() == pytest.approx(10.0)


def test_aggregation_norm_constant_and_empty_rows():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", norm_constant=10).item() == pytest.approx(10 / 30)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS.names())
def test_micro_batch_shares_add_up_to_the_batch_loss(mode):
    generator = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=generator)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 0, 3, 1, 4, 2])[:, None]).float()
    norms = BatchNorms.of(mask, norm_constant=8)
    shares = sum(aggregate_loss(loss[rows], mask[rows], mode, norms=norms) for rows in torch.arange(6).split(4))
    torch.testing.assert_close(shares, aggregate_loss(loss, mask, mode, norm_constant=8))
