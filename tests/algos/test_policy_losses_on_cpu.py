"""GSPO and CISPO against their authors' formulations: TRL 1.16's GRPOTrainer._compute_loss run on the same
batch (``importance_sampling_level="sequence"`` is GSPO, ``loss_type="cispo"`` is CISPO), a separate reference
written from each paper's equation, and hand-computed values. Every check compares values *and* gradients, so
replacing either loss by the clipped (GRPO) loss fails them."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from veripo.algos.policy_loss import POLICY_LOSSES, BatchNorms, policy_loss


def _batch(seed: int = 0, rows: int = 4, width: int = 6, spread: float = 0.3):
    """Log-probs with a gradient, old log-probs a little off, mixed-sign advantages, ragged mask."""
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=generator, dtype=torch.float64) * 3 - 0.05
    new = (old + spread * torch.randn(rows, width, generator=generator, dtype=torch.float64)).requires_grad_(True)
    lengths = torch.tensor([width, width - 2, 3, 1][:rows])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float64)
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5][:rows], dtype=torch.float64)
    return new, old, advantages, mask


def _grad(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def _trl_loss(loss_type: str, level: str, log_prob, old_log_prob, advantages, mask, epsilon_low, epsilon_high):
    """TRL 1.16's ``GRPOTrainer._compute_loss`` on these log-probs: a stand-in ``self`` with one process, no KL,
    no entropy mask, no vLLM correction, one accumulation step (the trainer's defaults otherwise)."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

    class Accelerator:
        num_processes = 1
        sync_gradients = True

        def reduce(self, value, reduction="sum"):
            return value

        def gather(self, value):
            return value

    model = SimpleNamespace(training=True)
    fake_self = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (log_prob, torch.zeros_like(log_prob), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=0.0, loss_type=loss_type, epsilon_low=epsilon_low,
        epsilon_high=epsilon_high, args=SimpleNamespace(delta=None, steps_per_generation=1), use_vllm=False,
        model=model, current_gradient_accumulation_steps=1, accelerator=Accelerator(),
        _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)}, max_completion_length=mask.shape[1])
    inputs = {"prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long), "prompt_mask": torch.ones(mask.shape[0], 1),
              "completion_ids": torch.zeros(mask.shape, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old_log_prob, "num_items_in_batch": mask.sum()}
    return trl_grpo.GRPOTrainer._compute_loss(fake_self, model, inputs)


# ---- GSPO ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [(3e-4, 4e-4), (0.05, 0.1), (0.5, 0.5)])
def test_gspo_matches_trl_sequence_level_importance_sampling(clip):
    new, old, advantages, mask = _batch(seed=1)
    ours, _ = policy_loss(new, old, advantages, mask, loss_type="gspo", loss_agg_mode="seq-mean-token-mean",
                          clip_low=clip[0], clip_high=clip[1])
    trl = _trl_loss("grpo", "sequence", new, old, advantages, mask, clip[0], clip[1])
    # rel 1e-7: seq-mean-token-mean divides by (tokens + 1e-8), as verl's agg_loss does
    assert ours.item() == pytest.approx(trl.item(), rel=1e-7)
    torch.testing.assert_close(_grad(ours, new), _grad(trl, new), rtol=1e-7, atol=1e-12)


def _gspo_reference(new, old, advantages, mask, clip_low, clip_high):
    """The GSPO paper's eq. (5)-(7) written directly: s_i = exp(mean_t log(pi/pi_old)) as a function of the
    whole sequence, J = mean_i min(s_i A_i, clip(s_i) A_i); the loss is -J."""
    s = torch.exp(((new - old) * mask).sum(-1) / mask.sum(-1))
    objective = torch.minimum(s * advantages, torch.clamp(s, 1 - clip_low, 1 + clip_high) * advantages)
    return -objective.mean()


def test_gspo_by_hand():
    # sequence 1: log-ratios (0.2, 0.0) -> s = e^0.1 = 1.10517, A = +1: clipped at 1.1 -> loss -1.1
    # sequence 2: log-ratios (-0.3,) -> s = e^-0.3 = 0.74082, A = -2: max(2 * 0.74082, 2 * 0.9) -> 1.8
    old = torch.zeros(2, 2)
    new = torch.tensor([[0.2, 0.0], [-0.3, 5.0]], requires_grad=True)  # 5.0 is padding
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = policy_loss(new, old, torch.tensor([1.0, -2.0]), mask, loss_type="gspo",
                                loss_agg_mode="seq-mean-token-mean", clip_low=0.1, clip_high=0.1)
    assert loss.item() == pytest.approx((-1.1 + 1.8) / 2, rel=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(1.0)  # both sequences clipped: no gradient
    assert _grad(loss, new).abs().max().item() == 0.0
    # unclipped with a wide range: d/dlogp_t of -A s / 2 = -A s / (2 |y|) on each token of the sequence
    loss, _ = policy_loss(new, old, torch.tensor([1.0, -2.0]), mask, loss_type="gspo",
                          loss_agg_mode="seq-mean-token-mean", clip_low=0.5, clip_high=0.5)
    s1, s2 = math.exp(0.1), math.exp(-0.3)
    assert loss.item() == pytest.approx((-s1 + 2 * s2) / 2, rel=1e-6)
    torch.testing.assert_close(_grad(loss, new), torch.tensor([[-s1 / 4, -s1 / 4], [2 * s2 / 2, 0.0]]))


def test_gspo_default_clip_range_is_the_papers():
    # a sequence ratio of 1.001 is already outside GSPO's (3e-4, 4e-4) range; the clipped loss's 0.2 is not
    old = torch.zeros(1, 3)
    new = torch.full((1, 3), math.log(1.001), requires_grad=True)
    loss, metrics = policy_loss(new, old, torch.tensor([1.0]), torch.ones(1, 3), loss_type="gspo",
                                loss_agg_mode="seq-mean-token-mean", clip_low=None, clip_high=None)
    assert loss.item() == pytest.approx(-1.0004) and metrics["clip_fraction"].item() == 1.0


# ---- CISPO --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon_max", [5.0, 1.2])
def test_cispo_matches_trl(epsilon_max):
    new, old, advantages, mask = _batch(seed=3, spread=0.6)
    ours, metrics = policy_loss(new, old, advantages, mask, loss_type="cispo", loss_agg_mode="token-mean",
                                clip_low=1.0, clip_high=epsilon_max - 1.0)
    trl = _trl_loss("cispo", "token", new, old, advantages, mask, 0.2, epsilon_max)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-9)
    torch.testing.assert_close(_grad(ours, new), _grad(trl, new), rtol=1e-9, atol=1e-12)
    if epsilon_max == 1.2:
        assert metrics["clip_fraction"].item() > 0  # the case exercises the clip


def _cispo_reference(new, old, advantages, mask, eps_low, eps_high):
    """MiniMax-M1 eq. (4)-(5): J = 1/sum|o_i| sum_i sum_t sg(clip(r_i,t, 1 - eps_low, 1 + eps_high)) A_i log pi."""
    weight = torch.clamp(torch.exp(new - old), 1 - eps_low, 1 + eps_high).detach()
    return -(weight * advantages[:, None] * new * mask).sum() / mask.sum()


@pytest.mark.parametrize(("loss_type", "reference", "mode", "clip"), [
    ("gspo", _gspo_reference, "seq-mean-token-mean", (3e-4, 4e-4)),
    ("gspo", _gspo_reference, "seq-mean-token-mean", (0.05, 0.1)),
    ("cispo", _cispo_reference, "token-mean", (0.2, 0.28)),
    ("cispo", _cispo_reference, "token-mean", (1.0, 4.0)),
])
def test_loss_equals_the_papers_objective(loss_type, reference, mode, clip):
    """Value and gradient against the paper's equation written directly (``_gspo_reference``, ``_cispo_reference``)."""
    new, old, advantages, mask = _batch(seed=4, spread=0.6)
    ours, _ = policy_loss(new, old, advantages, mask, loss_type=loss_type, loss_agg_mode=mode,
                          clip_low=clip[0], clip_high=clip[1])
    expected = reference(new, old, advantages, mask, *clip)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-7)  # seq-mean-token-mean's + 1e-8, as verl
    torch.testing.assert_close(_grad(ours, new), _grad(expected, new), rtol=1e-7, atol=1e-12)


def test_cispo_by_hand_every_token_keeps_its_gradient():
    # ratios 2.0 (A = +1, clipped to 1.28) and 0.5 (A = -1, clipped up to 0.8); log pi = log(2), log(0.5)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 0.5]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, -1.0]])
    loss, metrics = policy_loss(new, old, advantages, torch.ones(1, 2), loss_type="cispo",
                                loss_agg_mode="token-mean", clip_low=0.2, clip_high=0.28)
    expected = -(1.28 * 1.0 * math.log(2.0) + 0.8 * -1.0 * math.log(0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(1.0)
    # gradient -w A / N on both tokens; the clipped surrogate gives both exactly zero
    torch.testing.assert_close(_grad(loss, new), torch.tensor([[-1.28 / 2, 0.8 / 2]]))
    clipped, _ = policy_loss(new, old, advantages, torch.ones(1, 2), loss_type="clipped", clip_low=0.2,
                             clip_high=0.28, dual_clip=None)
    assert _grad(clipped, new).abs().max().item() == 0.0


def test_cispo_dual_clip_caps_negative_advantage_weights():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[6.0, 6.0]])).requires_grad_(True)
    out = POLICY_LOSSES.get("cispo")(new, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), clip_low=1.0,
                                     clip_high=4.0, dual_clip=3.0)
    (grad,) = torch.autograd.grad(out.per_token_loss.sum(), new)
    torch.testing.assert_close(grad, torch.tensor([[-5.0, 3.0]]))
    with pytest.raises(ValueError, match="dual_clip must be > 1.0"):
        POLICY_LOSSES.get("cispo")(new, old, torch.ones(1, 2), torch.ones(1, 2), dual_clip=0.5)


# ---- every loss with every aggregation ----------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["clipped", "gspo", "cispo"])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_group_shares_add_up_to_the_batch_loss_and_gradient(loss_type, mode):
    new, old, advantages, mask = _batch(seed=5)
    kwargs = {"loss_type": loss_type, "loss_agg_mode": mode, "clip_low": 0.1, "clip_high": 0.1}
    whole, _ = policy_loss(new, old, advantages, mask, norm_constant=8, **kwargs)
    norms = BatchNorms.of(mask, norm_constant=8)
    shares = sum(policy_loss(new[rows], old[rows], advantages[rows], mask[rows], norms=norms, **kwargs)[0]
                 for rows in torch.arange(4).split(3))
    assert shares.item() == pytest.approx(whole.item(), rel=1e-9)
    torch.testing.assert_close(_grad(shares, new), _grad(whole, new))


def test_losses_differ_from_each_other_on_the_same_batch():
    """A guard for the mutation check: on one off-policy batch the three losses are three different numbers."""
    new, old, advantages, mask = _batch(seed=6, spread=0.5)
    values = {name: policy_loss(new, old, advantages, mask, loss_type=name, clip_low=0.2, clip_high=0.2)[0].item()
              for name in ("clipped", "gspo", "cispo")}
    assert len({round(v, 6) for v in values.values()}) == 3, values
