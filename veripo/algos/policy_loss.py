"""Clipped policy-gradient loss and loss aggregation modes, as pure functions in registries.

The clipped loss is PPO's (Schulman et al. 2017) with DAPO's decoupled ``clip_low``/``clip_high`` ("clip-higher",
Yu et al. 2025) and dual clip for negative advantages (Ye et al. 2020, "Mastering Complex Control in MOBA
Games"); numerically it is verl 0.9.1's ``compute_policy_loss_vanilla`` (checked against
``verl_core_algos_goldens.json``). Aggregation modes are verl's ``agg_loss``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from veripo.algos.registry import Registry

LOSS_AGGREGATIONS: Registry = Registry("loss aggregation mode")
POLICY_LOSSES: Registry = Registry("policy loss")
register_loss_aggregation = LOSS_AGGREGATIONS.register
register_policy_loss = POLICY_LOSSES.register


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (same shapes); 0 for an empty mask rather than NaN."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


class BatchNorms(NamedTuple):
    """The normalisers of a whole (mini-)batch of responses.

    Aggregating a micro-batch with the norms of its whole batch gives its *share* of the batch loss: the
    shares of all micro-batches (or of all GRPO groups of a mini-batch) add up to the loss of the batch, so
    ``backward`` per micro-batch accumulates exactly the batch gradient.
    """

    tokens: float  # valid response tokens
    sequences: float  # responses with at least one valid token
    rows: float  # all responses
    norm_constant: float  # the constant of "seq-mean-token-sum-norm"

    @classmethod
    def of(cls, mask: torch.Tensor, norm_constant: float | None = None) -> BatchNorms:
        """Norms of a batch with response mask ``[B, R]``; ``norm_constant`` defaults to ``R`` (verl)."""
        return cls(
            tokens=float(mask.sum()),
            sequences=float((mask.sum(dim=-1) > 0).sum()),
            rows=float(mask.shape[0]),
            norm_constant=float(mask.shape[-1] if norm_constant is None else norm_constant),
        )


@register_loss_aggregation("token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, norms: BatchNorms) -> torch.Tensor:
    """Mean over all valid tokens of the batch (DAPO's token-level loss). ``loss``, ``mask``: ``[B, R]``."""
    return (loss * mask).sum() / max(norms.tokens, 1.0)


@register_loss_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norms: BatchNorms) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the original GRPO paper). ``[B, R]`` -> scalar.

    Sequences with no valid token are left out of the outer mean, as in verl.
    """
    per_sequence = (loss * mask).sum(dim=-1) / (mask.sum(dim=-1) + 1e-8)
    return per_sequence.sum() / max(norms.sequences, 1.0)


@register_loss_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(loss: torch.Tensor, mask: torch.Tensor, norms: BatchNorms) -> torch.Tensor:
    """Mean over (non-empty) sequences of each sequence's token sum. ``[B, R]`` -> scalar."""
    return (loss * mask).sum() / max(norms.sequences, 1.0)


@register_loss_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norms: BatchNorms) -> torch.Tensor:
    """Dr. GRPO's unbiased aggregation: ``sum(token losses) / (B * norm_constant)``. ``[B, R]`` -> scalar.

    The constant does not depend on the response lengths: by default the padded response length ``R``
    (verl's ``loss_scale_factor=None``); configure the max response length to keep it fixed across batches.
    """
    return (loss * mask).sum() / (max(norms.rows, 1.0) * norms.norm_constant)


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    norm_constant: float | None = None,
    norms: BatchNorms | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, R]`` to a scalar with the aggregation registered as ``mode``.

    With ``norms`` of a larger batch this is the share of these rows in that batch's loss (see ``BatchNorms``);
    without, the rows are the whole batch.
    """
    mask = mask.to(loss.dtype)
    return LOSS_AGGREGATIONS.get(mode)(loss, mask, norms or BatchNorms.of(mask, norm_constant))


class PolicyLossOutput(NamedTuple):
    """``per_token_loss`` ``[B, R]`` (zero where the mask is 0) and detached scalar metrics."""

    per_token_loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


@register_policy_loss("clipped", "vanilla", "ppo")
def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> PolicyLossOutput:
    """Clipped surrogate ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, dual-clipped for ``A < 0``.

    Args:
        log_prob: ``[B, R]`` current policy log-probs of the sampled tokens (carries the gradient).
        old_log_prob: ``[B, R]`` log-probs under the policy that sampled them.
        advantages: ``[B, R]`` token-level advantages (or ``[B]``, broadcast over tokens).
        response_mask: ``[B, R]`` 1 for response tokens, 0 for padding.
        dual_clip: ``c > 1`` caps the loss of negative-advantage tokens at ``-A c``; None disables it.
    Returns:
        ``PolicyLossOutput``: per-token loss ``[B, R]`` and metrics ``clip_fraction`` (tokens where the clip
        is active), ``clip_fraction_lower`` (dual clip active), ``approx_kl`` (mean of ``old - new``, verl's
        ``ppo_kl``) and ``ratio_mean``.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(log_prob)
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1.0 (or None to disable); got {dual_clip}")
    mask = response_mask.to(log_prob.dtype)
    # verl clamps the log-ratio so one far-off token cannot overflow exp().
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    metrics = {"clip_fraction": masked_mean(torch.gt(clipped, unclipped).to(loss.dtype), mask)}
    if dual_clip is not None:
        floor = -advantages * dual_clip
        dual_active = torch.gt(loss, floor) & (advantages < 0)
        loss = torch.where(advantages < 0, torch.minimum(loss, floor), loss)
        metrics["clip_fraction_lower"] = masked_mean(dual_active.to(loss.dtype), mask)
    metrics["approx_kl"] = masked_mean(-log_ratio, mask)
    metrics["ratio_mean"] = masked_mean(ratio, mask)
    return PolicyLossOutput(loss * mask, {name: value.detach() for name, value in metrics.items()})


def policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_type: str = "clipped",
    loss_agg_mode: str = "token-mean",
    norm_constant: float | None = None,
    norms: BatchNorms | None = None,
    **loss_kwargs: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar policy loss and its metrics: the registered ``loss_type`` reduced by ``loss_agg_mode``.

    Shapes as ``clipped_policy_loss``; ``loss_kwargs`` go to the loss (``clip_low``, ``clip_high``, ``dual_clip``).
    Pass the ``norms`` of the whole mini-batch when these rows are one micro-batch or group of it.
    """
    out = POLICY_LOSSES.get(loss_type)(log_prob, old_log_prob, advantages, response_mask, **loss_kwargs)
    return aggregate_loss(out.per_token_loss, response_mask, loss_agg_mode, norm_constant, norms), out.metrics
