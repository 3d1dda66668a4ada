"""DPO phase ("Pair-Fast-Align" in the VerIPO paper): targeted alignment on the verifier's pairs.

Sigmoid DPO (Rafailov et al. 2023), ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` with summed
response log-probs, plus an optional NLL term on the chosen response (``dpo.nll_coef``; the paper's figure
labels the update "maximum likelihood"). The reference is the policy at the start of the phase: its
log-probs are computed once for all pairs before training and stored in ``reference_logps.json``, so no
second model is held in memory and a resumed phase uses the original reference. Chosen and rejected
share one prompt pass (video included). No sampling: the pairs reuse the GRPO rollouts, which is why this
phase is several times cheaper than a GRPO phase (bench/bench_phases.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from veripo.algos.dpo import DPO_LOSSES
from veripo.algos.logprobs import backward_group, response_log_probs
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.records import Pair
from veripo.recipes.common import Stopwatch, build_scheduler, progress_bar
from veripo.recipes.context import (
    StageContext,
    StageResult,
    epoch_batch,
    optimizer_step,
    resume_stage,
    save_if_due,
)
from veripo.recipes.distributed import gather_objects
from veripo.recipes.run_dir import atomic_write_json, read_json
from veripo.recipes.sharding import gathered_weights, lockstep_calls

OUTPUTS = ["metrics.jsonl"]


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
    with gathered_weights(ctx.policy.model), \
            progress_bar("DPO reference log-probs", len(mine), ctx.show_progress and ctx.dist.is_main) as bar:
        for group in mine:
            ids, mask = pair_rows(group, tokens)
            logp = response_log_probs(ctx.policy.model, ctx.encode(by_id[group[0].sample_id]), ids, mask).log_probs
            sums = (logp * mask).sum(-1).view(-1, 2)
            local.extend((pair.id, sums[i].tolist()) for i, pair in enumerate(group))
            bar.advance(1)
    result = dict(gather_objects(ctx.dist, local))
    if ctx.dist.is_main:
        atomic_write_json(path, result)
    return result


def run_dpo(ctx: StageContext) -> StageResult:
    dpo = ctx.section("dpo")
    model, tokenizer = ctx.policy.model, ctx.policy.tokenizer
    pairs_path = ctx.inputs.get("pairs")
    if pairs_path is None or not pairs_path.exists():
        raise FileNotFoundError(f"stage '{ctx.stage.name}': no pairs file from a verify stage (expected {pairs_path})")
    by_id = {s.id: s for s in ctx.samples}
    pairs = read_jsonl(pairs_path, Pair)
    unknown = [p for p in pairs if p.sample_id not in by_id]
    if unknown:  # training on the rest would silently drop pairs
        raise RuntimeError(f"stage '{ctx.stage.name}': {len(unknown)} of {len(pairs)} pairs in {pairs_path} refer to "
                           f"questions this run has not loaded (first: pair {unknown[0].id!r}, sample_id "
                           f"{unknown[0].sample_id!r}); give the stage the data the pairs were built from")
    clock = Stopwatch()
    if not pairs:
        ctx.log(f"no pairs in {pairs_path}: nothing to align, the policy is unchanged")
        return StageResult(numbers={"pairs": 0, "wall_time_s": 0.0})
    tokens = {p.id: pair_token_ids(tokenizer, p) for p in pairs}
    per_epoch = math.ceil(len(pairs) / dpo.global_batch_size)
    total = per_epoch * dpo.epochs
    optimizer = ctx.optimizer(dpo.lr, max_grad_norm=dpo.max_grad_norm)
    scheduler = build_scheduler(optimizer, dpo.lr_schedule, dpo.warmup_steps, total)
    progress = resume_stage(ctx, optimizer, scheduler, OUTPUTS)
    if progress.done:
        return StageResult(steps=progress.step, numbers={"pairs": len(pairs), "wall_time_s": progress.extra.get("time_s", 0.0)})
    clock = Stopwatch(progress.extra.get("time_s", 0.0))
    ref = reference_logps(ctx, pairs, tokens)
    preference_loss = DPO_LOSSES.get("sigmoid")
    model.train()
    writer = JsonlWriter(ctx.stage_dir / "metrics.jsonl", fsync="batch") if ctx.dist.is_main else None
    if writer:
        writer.open()
    try:
        with progress_bar(f"DPO {ctx.stage.name}", total, ctx.show_progress and ctx.dist.is_main) as bar:
            bar.set_completed(progress.unit)
            for unit in range(progress.unit, total):
                epoch, batch = epoch_batch(pairs, unit, dpo.global_batch_size, ctx.cfg.seed, ctx.stage.name)
                chosen_tokens = float(sum(len(tokens[p.id][0]) for p in batch))
                optimizer.zero_grad(set_to_none=True)
                local: list[dict[str, float]] = []
                losses: list[float] = []
                mine = ctx.dist.shard(by_question(batch))
                for group, micro_batches in lockstep_calls(ctx.dist, model, mine, [1] * len(mine), shared_prefix=True):
                    ids, mask = pair_rows(group, tokens)
                    ref_logps = torch.tensor([ref[p.id] for p in group])  # [k, 2]

                    def loss_fn(logp: torch.Tensor, _entropy: Any, _rows: torch.Tensor) -> torch.Tensor:
                        sums = (logp * mask).sum(-1).view(-1, 2)  # [k, (chosen, rejected)]
                        ratios = sums - ref_logps
                        loss = preference_loss(ratios[:, 0] - ratios[:, 1], dpo.beta).sum() / len(batch)
                        if dpo.nll_coef:
                            loss = loss - dpo.nll_coef * sums[:, 0].sum() / chosen_tokens
                        local.extend({"chosen": float(r[0]), "rejected": float(r[1])} for r in dpo.beta * ratios.detach())
                        return loss

                    stats = backward_group(model, ctx.encode(by_id[group[0].sample_id]), ids, mask, loss_fn,
                                           min_micro_batches=micro_batches)
                    losses.append(float(stats.loss))
                rows = gather_objects(ctx.dist, local)
                loss = sum(gather_objects(ctx.dist, [sum(losses)]))
                grad_norm, lr = optimizer_step(ctx, optimizer, scheduler, dpo.max_grad_norm, progress)
                progress.unit = unit + 1
                n = max(1, len(rows))
                row = {
                    "stage": ctx.stage.name, "kind": "dpo", "step": progress.step, "global_step": progress.global_step,
                    "epoch": epoch, "lr": lr, "loss": loss, "grad_norm": grad_norm,
                    "chosen_reward": sum(r["chosen"] for r in rows) / n,
                    "rejected_reward": sum(r["rejected"] for r in rows) / n,
                    "margin": sum(r["chosen"] - r["rejected"] for r in rows) / n,
                    "pair_accuracy": sum(1.0 for r in rows if r["chosen"] > r["rejected"]) / n,
                    "time_s": clock.elapsed(),
                }
                if writer:
                    writer.write(row)
                bar.advance(1, loss=row["loss"], margin=row["margin"])
                save_if_due(ctx, progress, last=progress.unit == total, every=dpo.save_every, writers=[writer] if writer else [],
                            optimizer=optimizer, scheduler=scheduler, outputs=OUTPUTS, clock=clock)
    finally:
        if writer:
            writer.close()
    return StageResult(steps=progress.step, numbers={"pairs": len(pairs), "wall_time_s": clock.elapsed()})
