"""Per-token KL estimators between the policy and a reference, and the KL loss term with its coefficient.

Estimators follow Schulman's note "Approximating KL Divergence" (2020) and verl 0.9.1's ``kl_penalty``
(checked against ``verl_core_algos_goldens.json``): ``k1`` (verl "kl"), ``abs``, ``k2`` (verl "mse") and
``k3`` (verl "low_var_kl", the GRPO paper's estimator). The paper's lineage (DAPO, Dr. GRPO, VerIPO) trains
without KL, so the default coefficient is 0 and the term is then skipped entirely.
"""

from __future__ import annotations

import torch

from veripo.algos.policy_loss import BatchNorms, aggregate_loss
from veripo.algos.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
register_kl = KL_ESTIMATORS.register


@register_kl("k1", "kl")
def kl_k1(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """``log p - log p_ref``: unbiased, high variance, can be negative. ``[B, R]`` -> ``[B, R]``."""
    return log_prob - ref_log_prob


@register_kl("abs")
def kl_abs(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """``|log p - log p_ref|``. ``[B, R]`` -> ``[B, R]``."""
    return (log_prob - ref_log_prob).abs()


@register_kl("k2", "mse")
def kl_k2(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """``0.5 (log p - log p_ref)^2``: biased, low variance, non-negative. ``[B, R]`` -> ``[B, R]``."""
    return 0.5 * (log_prob - ref_log_prob).square()


@register_kl("k3", "low_var_kl")
def kl_k3(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """``exp(log p_ref - log p) - (log p_ref - log p) - 1``: unbiased and non-negative (GRPO's estimator).

    Clamped as verl does (log-ratio to [-20, 20], result to [-10, 10]) so a rare token cannot explode it.
    ``[B, R]`` -> ``[B, R]``.
    """
    log_ratio = torch.clamp(ref_log_prob - log_prob, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-10.0, max=10.0)


def kl_divergence(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate ``[B, R]`` with the estimator registered as ``estimator``."""
    return KL_ESTIMATORS.get(estimator)(log_prob, ref_log_prob)


def kl_loss(
    log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor | None,
    response_mask: torch.Tensor,
    *,
    coef: float = 0.0,
    estimator: str = "k3",
    loss_agg_mode: str = "token-mean",
    norm_constant: float | None = None,
    norms: BatchNorms | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coef * aggregated KL, aggregated KL detached)``; both zero when ``coef == 0`` (no reference needed).

    Args:
        log_prob, ref_log_prob: ``[B, R]`` policy and reference log-probs of the sampled tokens.
        response_mask: ``[B, R]``.
        norms: the whole mini-batch's ``BatchNorms`` when these rows are a micro-batch of it.
    """
    if coef == 0.0:
        zero = log_prob.new_zeros(())
        return zero, zero
    if ref_log_prob is None:
        raise ValueError(f"KL coefficient is {coef} but no reference log-probs were given")
    per_token = kl_divergence(log_prob, ref_log_prob, estimator)
    value = aggregate_loss(per_token, response_mask, loss_agg_mode, norm_constant, norms)
    return coef * value, value.detach()
