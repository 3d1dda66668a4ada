"""DPO loss against verl's golden formula numbers and against TRL 1.16's DPOTrainer loss on the same batch."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from veripo.algos.dpo import dpo_loss, dpo_metrics, sequence_logps


def test_dpo_sigmoid_matches_golden(shared_data):
    case = json.loads((shared_data / "golden" / "verl_core_algos_goldens.json").read_text())["cases"]
    case = case["dpo_sigmoid_formula"]
    t = {k: torch.tensor(case[k]) for k in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")}
    out = dpo_loss(**t, beta=case["beta"])
    torch.testing.assert_close(out.losses, torch.tensor(case["per_pair_loss"]))
    assert out.loss.item() == pytest.approx(case["mean_loss"], rel=1e-6)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor(case["chosen_rewards"]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor(case["rejected_rewards"]))


def test_policy_equal_to_reference_gives_ln2():
    logps = torch.tensor([-3.0, -7.0])
    assert dpo_loss(logps, logps, logps, logps, beta=0.5).loss.item() == pytest.approx(math.log(2))


def _trl_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, beta, loss_types, loss_weights):
    """Run TRL's own ``DPOTrainer._compute_loss`` on a batch [chosen; rejected] of given per-token log-probs.

    The model is replaced by a stub that returns those log-probs, so only TRL's loss code runs; everything it
    reads from ``self`` is provided explicitly.
    """
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    batch, length = per_token_logps.shape
    # TRL takes the completion mask over input_ids [B, L+1] and the log-probs of positions 1..L.
    mask = torch.cat([torch.zeros(batch, 1), completion_mask], dim=1).long()
    outputs = SimpleNamespace(
        log_probs=per_token_logps * completion_mask,
        entropy=torch.zeros(batch, length),
        mean_logits=torch.zeros(batch, length),
        is_top1=torch.zeros(batch, length, dtype=torch.bool),
    )

    def model(**kwargs):
        return outputs

    model.training = True
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake_self = SimpleNamespace(
        model=model,
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        use_weighting=False,
        label_smoothing=0.0,
        _metrics={"train": defaultdict(list)},
        _tp_size=1,
        _total_train_tokens=0,
        args=SimpleNamespace(),
    )
    inputs = {
        "input_ids": torch.zeros(batch, length + 1, dtype=torch.long),
        "attention_mask": torch.ones(batch, length + 1, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trl_dpo.DPOTrainer._compute_loss(fake_self, model, inputs, return_outputs=False)
    return loss, fake_self._metrics["train"]


@pytest.mark.parametrize("nll_coef", [0.0, 0.3])
def test_dpo_matches_trl_dpo_trainer(nll_coef):
    generator = torch.Generator().manual_seed(0)
    pairs, length = 4, 6
    token_logps = -torch.rand(2 * pairs, length, generator=generator) * 3
    mask = (torch.arange(length)[None, :] < torch.tensor([6, 3, 5, 1, 4, 6, 2, 5])[:, None]).float()
    ref_chosen, ref_rejected = (
        -torch.rand(pairs, generator=generator) * 10,
        -torch.rand(pairs, generator=generator) * 10,
    )
    loss_types, weights = (["sigmoid", "sft"], [1.0, nll_coef]) if nll_coef else (["sigmoid"], [1.0])
    trl_loss, trl_metrics = _trl_loss(token_logps, mask, ref_chosen, ref_rejected, 0.1, loss_types, weights)

    logps = sequence_logps(token_logps, mask)
    ours = dpo_loss(
        logps[:pairs],
        logps[pairs:],
        ref_chosen,
        ref_rejected,
        beta=0.1,
        nll_coef=nll_coef,
        chosen_token_logps=token_logps[:pairs],
        chosen_mask=mask[:pairs],
    )
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-6)
    metrics = dpo_metrics(ours)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[name].item() == pytest.approx(trl_metrics[name][0], rel=1e-6), name
    assert 0.0 < metrics["rewards/accuracies"].item() < 1.0  # the batch has pairs on both sides


def test_dpo_bad_arguments():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="chosen_token_logps"):
        dpo_loss(x, x, x, x, nll_coef=1.0)
