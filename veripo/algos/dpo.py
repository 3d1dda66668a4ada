"""DPO loss (Rafailov et al. 2023, "Direct Preference Optimization") with an optional NLL term on the chosen.

The sigmoid loss is ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` over summed response log-probs,
identical to TRL 1.16 ``DPOTrainer`` with ``loss_type="sigmoid"`` and to verl's DPO formula (both checked in
tests). The optional NLL term is TRL's ``"sft"`` loss type (the token mean of ``-log p`` over all chosen tokens
of the batch), as in RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"); VerIPO's DPO
phase may add it to keep the chosen chains likely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from veripo.algos.registry import Registry

DPO_LOSSES: Registry = Registry("DPO loss")
register_dpo_loss = DPO_LOSSES.register


class DPOOutput(NamedTuple):
    """``loss`` scalar (mean over pairs, plus ``nll_coef * nll``); ``losses`` ``[B]`` per pair (preference part
    only); ``chosen_rewards``/``rejected_rewards`` ``[B]`` implicit rewards ``beta * (pi - ref)``, detached;
    ``nll`` scalar (0 when not requested)."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll: torch.Tensor


class PairNorms(NamedTuple):
    """The normalisers of a whole batch of pairs, so the loss of some of its pairs (one question's, one
    micro-batch) is their *share* of the batch loss: the shares add up to the batch loss, and backward per
    share accumulates exactly the batch gradient (as ``BatchNorms`` for policy losses)."""

    pairs: float  # pairs in the batch: the preference loss is their mean
    chosen_tokens: float  # chosen response tokens in the batch: the NLL term is their token mean


@register_dpo_loss("sigmoid")
def sigmoid_preference_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """``-log sigmoid(beta * delta)`` per pair; ``delta`` ``[B]`` is the difference of log-ratios."""
    return -F.logsigmoid(beta * delta)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token log-probs over the response: ``[B, R]``, mask ``[B, R]`` -> ``[B]``."""
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=-1)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    nll_coef: float = 0.0,
    chosen_token_logps: torch.Tensor | None = None,
    chosen_mask: torch.Tensor | None = None,
    norms: PairNorms | None = None,
) -> DPOOutput:
    """DPO loss on a batch of pairs.

    Args:
        chosen_logps, rejected_logps: ``[B]`` summed response log-probs under the policy (with gradient).
        ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the frozen reference (precomputed).
        beta: strength of the implicit KL constraint.
        nll_coef: weight of the NLL term; it needs ``chosen_token_logps`` ``[B, R]`` and ``chosen_mask`` ``[B, R]``,
            or ``norms`` (then ``chosen_logps`` are the chosen responses' summed token log-probs).
        norms: of the whole batch when these pairs are part of it (``PairNorms``): the result is their share.
    Returns:
        ``DPOOutput``. Reward margin = ``chosen_rewards - rejected_rewards``; pair accuracy = fraction > 0.
    """
    if beta <= 0:
        raise ValueError(f"DPO beta must be > 0; got {beta}")
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    losses = DPO_LOSSES.get(loss_type)(chosen_logratios - rejected_logratios, beta)
    loss = losses.mean() if norms is None else losses.sum() / norms.pairs
    nll = losses.new_zeros(())
    if nll_coef != 0.0:
        if norms is not None:
            nll = -chosen_logps.sum() / norms.chosen_tokens
        elif chosen_token_logps is None or chosen_mask is None:
            raise ValueError("nll_coef != 0 needs chosen_token_logps [B, R] and chosen_mask [B, R], or norms")
        else:
            nll = -chosen_token_logps[chosen_mask.bool()].mean()
        loss = loss + nll_coef * nll
    return DPOOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
        nll=nll.detach(),
    )


def dpo_metrics(out: DPOOutput) -> dict[str, torch.Tensor]:
    """Detached scalar metrics of a DPO batch, named as TRL logs them: loss, implicit rewards, their margin,
    and pair accuracy (the fraction of pairs whose chosen reward exceeds the rejected one)."""
    margins = out.chosen_rewards - out.rejected_rewards
    return {
        "loss": out.loss.detach(),
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (margins > 0).to(margins.dtype).mean(),
        "nll": out.nll,
    }
