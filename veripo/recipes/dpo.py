"""DPO phase ("Pair-Fast-Align" in the VerIPO paper): targeted alignment on the verifier's pairs.

The loss is ``veripo.algos.dpo.dpo_loss`` with the registered ``dpo.loss_type`` (sigmoid DPO, Rafailov et al.
2023: ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` with summed response log-probs), plus an
optional NLL term on the chosen response (``dpo.nll_coef``; the paper's figure labels the update "maximum
likelihood"); each question's pairs backpropagate their share of the batch loss (``PairNorms``). The reference is the policy at the start of the phase: its
log-probs are computed once for all pairs before training and stored in ``reference_logps.json``, so no
second model is held in memory and a resumed phase uses the original reference. Chosen and rejected
share one prompt pass (video included). No sampling: the pairs reuse the GRPO rollouts, which is why this
phase is several times cheaper than a GRPO phase (bench/bench_phases.py).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from veripo.algos.dpo import PairNorms, dpo_loss
from veripo.data.jsonl import check_unique_ids, read_jsonl
from veripo.data.loaders import DataError
from veripo.data.records import Pair
from veripo.models.grouped_forward import backward_group, micro_batch_plan, response_log_probs, work_tokens
from veripo.parallel.balance import imbalance, rank_split
from veripo.recipes.checkpoint import Progress
from veripo.recipes.common import progress_bar
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.run_dir import atomic_write_json, read_json
from veripo.recipes.sources import SKIPPED_FILE, drop_unusable
from veripo.recipes.sizing import batch_size_of
from veripo.recipes.stage_loop import Optimization, StageLoop, epoch_batch, run_training_stage


def pair_token_ids(tokenizer: Any, pair: Pair) -> tuple[list[int], list[int]]:
    """Chosen and rejected response ids: the rollouts' own tokens when the pair carries them."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [end]

    chosen = pair.chosen_token_ids or encode(pair.chosen)
    rejected = pair.rejected_token_ids or encode(pair.rejected)
    return list(chosen), list(rejected)


def pair_rows(group: list[Pair], tokens: dict[str, tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Response ids and mask ``[2k, R]`` of k pairs of one question: row ``2i`` chosen, ``2i + 1`` rejected."""
    seqs = [seq for p in group for seq in tokens[p.id]]
    width = max(len(seq) for seq in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1.0
    return ids, mask


def by_question(pairs: list[Pair]) -> list[list[Pair]]:
    """Pairs grouped by question, in order of first appearance: one prompt pass serves a whole group."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.sample_id, []).append(pair)
    return list(groups.values())


def reference_logps(ctx: StageContext, pairs: list[Pair], tokens: dict[str, tuple[list[int], list[int]]]) -> dict[str, list[float]]:
    """Summed log-probs ``[chosen, rejected]`` per pair under the stage-start policy (computed once)."""
    path = ctx.stage_dir / "reference_logps.json"
    cached = read_json(path)
    if cached is not None and set(cached) >= {p.id for p in pairs}:
        return cached
    by_id = {s.id: s for s in ctx.samples}
    mine = ctx.dist.shard(by_question(pairs))
    local = []
    with ctx.parallel.gathered_weights(), \
            progress_bar("DPO reference log-probs", len(mine), ctx.show_progress and ctx.dist.is_main) as bar:
        for group in mine:
            ids, mask = pair_rows(group, tokens)
            logp = response_log_probs(ctx.policy.model, ctx.encode(by_id[group[0].sample_id]), ids, mask).log_probs
            sums = (logp * mask).sum(-1).view(-1, 2)
            local.extend((pair.id, sums[i].tolist()) for i, pair in enumerate(group))
            bar.advance(1)
    result = dict(ctx.parallel.gather(local))
    if ctx.dist.is_main:
        atomic_write_json(path, result)
    return result


def pair_loss(group: list[Pair], logp: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
              ref: dict[str, list[float]], dpo: Any, norms: PairNorms) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of the batch's DPO loss of the pairs in ``rows`` (log-probs ``logp`` ``[2k, R]`` of ``group``'s
    chosen/rejected rows ``rows``, in pairs), through the registry's ``dpo_loss``; and the implicit rewards
    ``[k, 2]`` (chosen, rejected)."""
    sums = (logp * mask[rows]).sum(-1).view(-1, 2)  # [k, (chosen, rejected)]
    pairs = [group[int(r) // 2] for r in rows[::2]]
    ref_logps = torch.tensor([ref[p.id] for p in pairs])  # [k, 2]
    out = dpo_loss(sums[:, 0], sums[:, 1], ref_logps[:, 0], ref_logps[:, 1], beta=dpo.beta, loss_type=dpo.loss_type,
                   nll_coef=dpo.nll_coef, norms=norms)
    return out.loss, torch.stack([out.chosen_rewards, out.rejected_rewards], dim=1)


class DPOStage:
    """A batch of ``dpo.global_batch_size`` pairs is one optimizer step; a question's pairs share one prompt
    pass, in micro-batches of ``dpo.micro_batch_size`` pairs."""

    outputs = ["metrics.jsonl"]
    time_budget_s = None

    def __init__(self, ctx: StageContext, pairs: list[Pair]) -> None:
        self.ctx, self.pairs, self.dpo = ctx, pairs, ctx.section("dpo")
        self.title = f"DPO {ctx.stage.name}"
        self.size = batch_size_of(len(pairs), self.dpo.global_batch_size, self.dpo.epochs, self.dpo.max_steps)
        self.units = self.steps = self.size.units
        self.tokens = {p.id: pair_token_ids(ctx.policy.tokenizer, p) for p in pairs}
        self.by_id = {s.id: s for s in ctx.samples}
        self.ref: dict[str, list[float]] = {}
        self.prompt_tokens: dict[str, int] = {}  # by sample id (``prompt_length``)

    def start(self, loop: StageLoop) -> None:
        self.ref = reference_logps(self.ctx, self.pairs, self.tokens)

    def numbers(self, progress: Progress) -> dict[str, Any]:
        return {"pairs": len(self.pairs)}

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        ctx, dpo, model = self.ctx, self.dpo, self.ctx.policy.model
        epoch, batch = epoch_batch(self.pairs, unit, dpo.global_batch_size, ctx.cfg.seed, ctx.stage.name)
        norms = PairNorms(pairs=float(len(batch)), chosen_tokens=float(sum(len(self.tokens[p.id][0]) for p in batch)))
        rewards: list[dict[str, float]] = []
        losses: list[float] = []
        questions = by_question(batch)
        lengths = [[len(seq) for p in group for seq in self.tokens[p.id]] for group in questions]
        prompts = [self.prompt_length(group[0].sample_id) for group in questions]
        plans = [micro_batch_plan(model, prompt, rows, micro_batch=dpo.micro_batch_size,
                                  max_tokens=dpo.max_tokens_per_micro_batch, unit=2)
                 for prompt, rows in zip(prompts, lengths)]
        work = [work_tokens(model, prompt, rows) for prompt, rows in zip(prompts, lengths)]
        split = rank_split(work, ctx.dist.world, ctx.cfg.distributed.balance_tokens)
        mine = [(questions[i], plans[i].chunks) for i in split[ctx.dist.rank]]
        over_budget = sum(ctx.parallel.gather([sum(plans[i].over_budget for i in split[ctx.dist.rank])]))
        if over_budget:
            ctx.log(f"DPO step {unit}: {over_budget} pairs over dpo.max_tokens_per_micro_batch "
                    f"({dpo.max_tokens_per_micro_batch}) with their prompt ran alone")

        def backward(call: tuple[list[Pair], list[list[int]]], micro_batches: int) -> None:
            group, chunks = call
            ids, mask = pair_rows(group, self.tokens)

            def loss_fn(logp: torch.Tensor, _entropy: Any, rows: torch.Tensor) -> torch.Tensor:
                loss, implicit = pair_loss(group, logp, mask, rows, self.ref, dpo, norms)
                rewards.extend({"chosen": float(r[0]), "rejected": float(r[1])} for r in implicit)
                return loss

            stats = backward_group(model, ctx.encode(self.by_id[group[0].sample_id]), ids, mask, loss_fn,
                                   chunks=chunks, min_micro_batches=micro_batches, passes=ctx.parallel.passes)
            losses.append(float(stats.loss))

        counts = [len(chunks) for _, chunks in mine]
        grad_norm, lr = loop.optimizer_step(mine, counts, True, backward)
        rows = ctx.parallel.gather(rewards)
        loss = sum(ctx.parallel.gather([sum(losses)]))
        n = max(1, len(rows))
        margin = sum(r["chosen"] - r["rejected"] for r in rows) / n
        loop.metrics_row(
            "dpo", epoch=epoch, lr=lr, loss=loss, grad_norm=grad_norm,
            chosen_reward=sum(r["chosen"] for r in rows) / n, rejected_reward=sum(r["rejected"] for r in rows) / n,
            margin=margin, pair_accuracy=sum(1.0 for r in rows if r["chosen"] > r["rejected"]) / n,
            over_budget_micro_batches=over_budget, rank_imbalance=imbalance(work, split),
            rank_imbalance_by_question=imbalance(work, rank_split(work, ctx.dist.world, False)))
        return {"loss": loss, "margin": margin}

    def prompt_length(self, sample_id: str) -> int:
        """A question's prompt tokens (text and visual), for the token budget and the ranks' split; 0 where
        neither needs it (one process without a budget), which saves encoding the prompt again."""
        if self.dpo.max_tokens_per_micro_batch is None and self.ctx.dist.world == 1:
            return 0
        if sample_id not in self.prompt_tokens:
            self.prompt_tokens[sample_id] = int(self.ctx.encode(self.by_id[sample_id])["input_ids"].shape[1])
        return self.prompt_tokens[sample_id]


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a file; JsonlError naming file, line and field for a malformed pair (``chosen: null``)
    or a repeated pair id; OSError for a file that is not there."""
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such pairs file", str(path))
    pairs = read_jsonl(path, Pair)
    check_unique_ids(pairs, path)
    return pairs


def run_dpo(ctx: StageContext) -> StageResult:
    pairs_path = ctx.inputs.get("pairs")
    if pairs_path is None or not pairs_path.exists():
        raise FileNotFoundError(f"stage '{ctx.stage.name}': no pairs file from a verify stage (expected {pairs_path})")
    by_id = {s.id: s for s in ctx.samples}
    pairs = read_pairs(pairs_path)
    unknown = [p for p in pairs if p.sample_id not in by_id]
    if unknown:  # training on the rest would silently drop pairs
        raise DataError(f"stage '{ctx.stage.name}': {len(unknown)} of {len(pairs)} pairs in {pairs_path} refer to "
                           f"questions this run has not loaded (first: pair {unknown[0].id!r}, sample_id "
                           f"{unknown[0].sample_id!r}); give the stage the data the pairs were built from")
    asked = [by_id[i] for i in dict.fromkeys(p.sample_id for p in pairs)]
    usable = {s.id for s in drop_unusable(asked, ctx.encode, stage=ctx.stage.name, max_share=ctx.cfg.max_bad_share,
                                          log=ctx.log, record=ctx.stage_dir / SKIPPED_FILE if ctx.dist.is_main else None)}
    pairs = [p for p in pairs if p.sample_id in usable]
    if not pairs:
        ctx.log(f"no pairs in {pairs_path}: nothing to align, the policy is unchanged")
        return StageResult(numbers={"pairs": 0, "wall_time_s": 0.0})
    return run_training_stage(ctx, DPOStage(ctx, pairs), Optimization.of(ctx.section("dpo")))
