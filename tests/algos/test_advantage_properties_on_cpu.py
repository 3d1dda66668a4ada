"""Properties every group advantage estimator must keep, on random groups (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veripo.algos.advantages import group_advantages

groups = st.lists(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=8), min_size=1, max_size=5)


def flat(rewards: list[list[float]]) -> tuple[torch.Tensor, list[int]]:
    values = [r for group in rewards for r in group]
    index = [i for i, group in enumerate(rewards) for _ in group]
    return torch.tensor(values, dtype=torch.float64), index


@settings(max_examples=60, deadline=None)
@given(groups)
def test_advantages_sum_to_zero_within_each_group(rewards):
    values, index = flat(rewards)
    for estimator in ("grpo", "drgrpo", "rloo"):
        advantages = group_advantages(values, index, estimator=estimator)
        sums = torch.zeros(len(rewards), dtype=torch.float64).index_add_(0, torch.tensor(index), advantages)
        assert sums.abs().max() < 1e-9 * (1 + values.abs().max() * len(values)), estimator


@settings(max_examples=60, deadline=None)
@given(groups, st.floats(0.1, 10), st.floats(-3, 3))
def test_grpo_is_invariant_to_affine_reward_changes(rewards, scale, shift):
    values, index = flat(rewards)
    spread = torch.tensor([max(g) - min(g) for g in rewards])
    if spread.min() < 1e-2:  # eps dominates nearly-equal groups; invariance holds only away from them
        return
    base = group_advantages(values, index, estimator="grpo")
    moved = group_advantages(values * scale + shift, index, estimator="grpo")
    torch.testing.assert_close(moved, base, rtol=1e-3, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(groups)
def test_rloo_equals_reward_minus_mean_of_the_others(rewards):
    values, index = flat(rewards)
    advantages = group_advantages(values, index, estimator="rloo")
    expected = [r - (sum(group) - r) / (len(group) - 1) for group in rewards for r in group]
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))
