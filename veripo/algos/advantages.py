"""Outcome advantage estimators for group-sampled responses (one scalar reward per response).

Every estimator is a pure function registered in ``ADVANTAGES`` with the signature
``fn(rewards [N], group_ids [N] long, eps) -> advantages [N]``; ``group_advantages`` is the entry point that
accepts either a ``[Q, G]`` matrix (row = question) or flat rewards with a group index, as verl's
``compute_grpo_outcome_advantage(token_level_rewards, response_mask, index)`` does.

Edge cases follow verl 0.9.1 (checked against ``verl_core_algos_goldens.json``): a singleton group has mean 0
and std 1, so its advantage is its raw reward; an all-equal group has std 0 and gets advantage 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from veripo.algos.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")
register_advantage = ADVANTAGES.register


def _group_sizes_and_means(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response group size and group mean, each ``[N]``; singleton groups get mean 0 as in verl."""
    num_groups = int(group_ids.max()) + 1
    sizes = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, group_ids, torch.ones_like(rewards)
    )
    sums = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group_ids, rewards)
    means = torch.where(sizes > 1, sums / sizes, torch.zeros_like(sums))
    return sizes[group_ids], means[group_ids]


def _group_std(rewards: torch.Tensor, group_ids: torch.Tensor, size: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Unbiased (N-1) per-group standard deviation broadcast to ``[N]``; singletons get 1 (verl's convention)."""
    num_groups = int(group_ids.max()) + 1
    squares = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, group_ids, (rewards - mean) ** 2
    )[group_ids]
    return torch.where(size > 1, (squares / (size - 1).clamp(min=1)).sqrt(), torch.ones_like(rewards))


@register_advantage("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): ``(r - mean_group) / (std_group + eps)``, std unbiased.

    Args:
        rewards: ``[N]`` one scalar reward per response.
        group_ids: ``[N]`` long, responses with the same id were sampled for the same prompt.
    Returns:
        ``[N]`` advantages.
    """
    size, mean = _group_sizes_and_means(rewards, group_ids)
    return (rewards - mean) / (_group_std(rewards, group_ids, size, mean) + eps)


@register_advantage("drgrpo", "grpo_no_std")
def drgrpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``r - mean_group``, no std division.

    Matches verl's GRPO with ``norm_adv_by_std_in_grpo=False``. ``eps`` is unused (kept for one signature).
    Shapes as ``grpo_advantage``.
    """
    _, mean = _group_sizes_and_means(rewards, group_ids)
    return rewards - mean


@register_advantage("rloo")
def rloo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j = (r_i - mean) * n / (n - 1)``.

    verl's ``compute_rloo_outcome_advantage``: a singleton group keeps its raw reward. Shapes as
    ``grpo_advantage``; ``eps`` is unused.
    """
    size, mean = _group_sizes_and_means(rewards, group_ids)
    scale = torch.where(size > 1, size / (size - 1).clamp(min=1), torch.ones_like(size))
    return (rewards - mean) * scale


def group_ids_from_index(index: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
    """Turn any per-response group labels (strings, ints, uuids) into contiguous ``[N]`` long ids."""
    if isinstance(index, torch.Tensor):
        return torch.unique(index, return_inverse=True)[1].long()
    ids: dict[Hashable, int] = {}
    return torch.tensor([ids.setdefault(label, len(ids)) for label in index], dtype=torch.long)


def group_advantages(
    rewards: torch.Tensor,
    index: Sequence[Hashable] | torch.Tensor | None = None,
    *,
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages of group-sampled responses with the estimator registered as ``estimator``.

    Args:
        rewards: ``[Q, G]`` (row = the G responses to one question; ``index`` must be None) or ``[N]``
            flat rewards with ``index``, ``N`` labels saying which prompt each response belongs to.
        estimator: ``"grpo"``, ``"drgrpo"`` or ``"rloo"`` (see ``ADVANTAGES.names()``).
    Returns:
        Advantages with the shape of ``rewards``. Multiply ``advantages[..., None] * response_mask``
        for token-level advantages ``[N, R]``.
    """
    function = ADVANTAGES.get(estimator)
    if rewards.dim() == 2 and index is None:
        q, g = rewards.shape
        group_ids = torch.arange(q, device=rewards.device).repeat_interleave(g)
        return function(rewards.reshape(-1), group_ids, eps).reshape(q, g)
    if rewards.dim() != 1 or index is None:
        raise ValueError(
            f"rewards must be [Q, G] without index or [N] with an index of N labels; got shape "
            f"{tuple(rewards.shape)} and index {'None' if index is None else len(index)}"
        )
    if len(index) != rewards.shape[0]:
        raise ValueError(f"index has {len(index)} labels but rewards has {rewards.shape[0]} entries")
    if rewards.shape[0] == 0:
        return rewards.clone()
    return function(rewards, group_ids_from_index(index).to(rewards.device), eps)
