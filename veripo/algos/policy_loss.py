"""Policy-gradient losses (clipped PPO/GRPO, GSPO, CISPO) and loss aggregation modes, as pure functions in
registries (docs/algorithms.md has each formula and its source).

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


def _check_dual_clip(dual_clip: float | None) -> None:
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1.0 (or None to disable); got {dual_clip}")


def _clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_low: float,
                       clip_high: float, dual_clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's pessimistic surrogate on ``ratio`` ``[B, R]``: ``max(-A r, -A clip(r, 1 - lo, 1 + hi))``, for
    ``A < 0`` capped at ``-A dual_clip``; per-token loss (unmasked) and the clip metrics."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    metrics = {"clip_fraction": masked_mean(torch.gt(clipped, unclipped).to(loss.dtype), mask)}
    if dual_clip is not None:
        floor = -advantages * dual_clip
        dual_active = torch.gt(loss, floor) & (advantages < 0)
        loss = torch.where(advantages < 0, torch.minimum(loss, floor), loss)
        metrics["clip_fraction_lower"] = masked_mean(dual_active.to(loss.dtype), mask)
    return loss, metrics


def _output(loss: torch.Tensor, mask: torch.Tensor, metrics: dict[str, torch.Tensor], log_ratio: torch.Tensor,
            ratio: torch.Tensor) -> PolicyLossOutput:
    """The masked per-token loss and the detached metrics, with ``approx_kl`` (verl's ``ppo_kl``) and ``ratio_mean``."""
    metrics = {**metrics, "approx_kl": masked_mean(-log_ratio, mask), "ratio_mean": masked_mean(ratio, mask)}
    return PolicyLossOutput(loss * mask, {name: value.detach() for name, value in metrics.items()})


def _token_advantages(advantages: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    return advantages[:, None].expand_as(log_prob) if advantages.dim() == 1 else advantages


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
    advantages = _token_advantages(advantages, log_prob)
    _check_dual_clip(dual_clip)
    mask = response_mask.to(log_prob.dtype)
    # verl clamps the log-ratio so one far-off token cannot overflow exp().
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    loss, metrics = _clipped_surrogate(ratio, advantages, mask, clip_low, clip_high, dual_clip)
    return _output(loss, mask, metrics, log_ratio, ratio)


@register_policy_loss("gspo")
def gspo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): the clipped surrogate
    on the length-normalised *sequence* ratio ``s_i = exp(mean_t(log pi - log pi_old))``.

    In the token form of the paper (its eq. for GSPO-token, as verl 0.9's ``compute_policy_loss_gspo`` in
    ``verl/trainer/ppo/core_algos.py``): ``s_i,t = sg[s_i] * pi_t / sg[pi_t]``, whose value is ``s_i`` on every
    token and whose gradient, averaged over the tokens of a sequence, is the gradient of ``s_i``. So with the
    ``seq-mean-token-mean`` aggregation (the paper's, and verl's) the loss is
    ``mean_i max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high))``; other aggregations weight the
    sequences by their lengths as they do for ``clipped``. The default clip range is the paper's
    (3e-4, 4e-4): a sequence ratio moves far less than a token ratio. Shapes, ``dual_clip`` and metrics as
    ``clipped_policy_loss`` (``clip_fraction`` counts tokens of clipped sequences).
    """
    advantages = _token_advantages(advantages, log_prob)
    _check_dual_clip(dual_clip)
    mask = response_mask.to(log_prob.dtype)
    log_ratio = log_prob - old_log_prob
    sequence_log_ratio = (log_ratio * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    # value s_i on every token, gradient of log pi_t; clamped as verl does so exp() cannot overflow
    token_log_ratio = torch.clamp(log_prob - log_prob.detach() + sequence_log_ratio.detach()[:, None], max=10.0)
    ratio = torch.exp(token_log_ratio)
    loss, metrics = _clipped_surrogate(ratio, advantages, mask, clip_low, clip_high, dual_clip)
    return _output(loss, mask, metrics, log_ratio, ratio)


@register_policy_loss("cispo")
def cispo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 1.0,
    clip_high: float = 4.0,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5): REINFORCE with clipped, stop-gradient importance weights,
    ``-sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi``.

    Unlike the clipped surrogate no token loses its gradient: a clipped token still contributes
    ``-w A grad log pi`` with the clipped weight ``w``. The authors released no training code; the paper
    bounds only the top (its ``eps_low`` is left large), so the defaults are no lower bound
    (``clip_low`` 1.0: ``r`` is never below 0) and TRL 1.16's / ScaleRL's ``eps_max`` of 5
    (``loss_type="cispo"`` in ``trl/trainer/grpo_trainer.py`` clamps ``r`` at ``epsilon_high`` = 1 + our
    ``clip_high``). ``dual_clip`` caps the weight of negative-advantage tokens at ``c``. Shapes and metrics as
    ``clipped_policy_loss``; ``clip_fraction`` counts tokens whose weight was clipped.
    """
    advantages = _token_advantages(advantages, log_prob)
    _check_dual_clip(dual_clip)
    mask = response_mask.to(log_prob.dtype)
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    if dual_clip is not None:
        weight = torch.where(advantages < 0, torch.clamp(weight, max=dual_clip), weight)
    loss = -weight.detach() * advantages * log_prob
    metrics = {"clip_fraction": masked_mean(torch.ne(weight, ratio).to(log_prob.dtype), mask)}
    return _output(loss, mask, metrics, log_ratio, ratio)


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

    Shapes as ``clipped_policy_loss``; ``loss_kwargs`` go to the loss (``clip_low``, ``clip_high``, ``dual_clip``;
    a None ``clip_low``/``clip_high`` means the loss's own default). Pass the ``norms`` of the whole mini-batch
    when these rows are one micro-batch or group of it.
    """
    for key in ("clip_low", "clip_high"):
        if key in loss_kwargs and loss_kwargs[key] is None:
            del loss_kwargs[key]
    out = POLICY_LOSSES.get(loss_type)(log_prob, old_log_prob, advantages, response_mask, **loss_kwargs)
    return aggregate_loss(out.per_token_loss, response_mask, loss_agg_mode, norm_constant, norms), out.metrics
