"""GRPO phase ("Group-Slow-Search" in the VerIPO paper): explore with G sampled rollouts per question.

Per rollout batch of Q questions:
  1. sample G responses per question (prompt, video included, prefilled once per question);
  2. score every response with the configured reward profile (rule rewards: accuracy + format);
  3. group advantages ``(r_i - mean(r)) / (std(r) + eps)`` (or Dr. GRPO / RLOO), optionally dropping groups
     whose rewards are all equal or whose accuracy is outside a band;
  4. append every rollout (text, rewards, advantage, policy version) to ``rollouts.jsonl``: the verifier's
     input; per-question accuracy to ``question_stats.jsonl``: the easy-sample discard's input;
  5. ``Q*G / global_batch_size`` optimizer steps with the clipped ratio against the sampling policy's
     log-probs; each group's prompt runs once and its responses against the prompt's KV cache
     (``grpo.shared_prefix``; ``false`` is the per-sequence baseline).

What it is not: no value model, no reference model unless ``grpo.kl_coef > 0`` (then the policy at the
start of the stage is kept frozen), old log-probs come from the sampler (exact for the transformers
engine in fp32; they equal a teacher-forced forward to ~1e-6).

Resume: a checkpoint after every ``save_every`` rollout batches; every random draw is seeded from the run
seed, the stage and the batch index, so a resumed stage redoes exactly the work that was lost.
Data parallel: questions are split over ranks; see ``veripo.recipes.distributed``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from veripo.algos.advantages import group_advantages
from veripo.algos.kl import kl_divergence
from veripo.algos.logprobs import backward_group, every_rank_runs_every_pass, micro_batch_count, response_log_probs
from veripo.algos.policy_loss import clipped_policy_loss
from veripo.data.jsonl import JsonlWriter
from veripo.data.records import Rollout, Sample
from veripo.recipes.common import (
    Stopwatch,
    build_scheduler,
    derive_seed,
    generator,
    progress_bar,
)
from veripo.recipes.context import (
    StageContext,
    StageResult,
    optimizer_step,
    resume_stage,
    save_if_due,
)
from veripo.recipes.distributed import gather_objects
from veripo.recipes.sharding import gathered_weights, is_weight_sharded, lockstep_calls
from veripo.rewards import parse_completion
from veripo.rewards.profiles import build_profile
from veripo.rollout import HFRolloutEngine, SamplingParams

OUTPUTS = ["rollouts.jsonl", "metrics.jsonl", "question_stats.jsonl"]


@dataclass
class ScoredGroup:
    """One question's G responses with rewards; plain data so ranks can exchange it."""

    sample_id: str
    question: int  # position in the rollout batch
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str]
    finish: list[str]
    rewards: list[dict[str, float]]
    totals: list[float]
    prompt_tokens: int
    advantages: list[float] | None = None
    kept: bool = True


def batch_questions(samples: list[Sample], unit: int, size: int, seed: int, stage: str) -> list[Sample]:
    """Questions of rollout batch ``unit``: epochs of seeded permutations, cut into batches of ``size``."""
    n = len(samples)
    start = unit * size
    out: list[Sample] = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        order = torch.randperm(n, generator=generator(seed, stage, "order", epoch)).tolist()
        take = min(size - len(out), n - offset)
        out.extend(samples[i] for i in order[offset : offset + take])
    return out


def sample_and_score(ctx: StageContext, engine: HFRolloutEngine, questions: list[tuple[int, Sample]], unit: int) -> list[ScoredGroup]:
    """G responses per question, ``rollout.batch_questions`` questions per engine call, each question with
    its own seed (from the run seed, stage, batch and sample id: independent of the rank), then scored."""
    rollout = ctx.section("rollout")
    rewards = ctx.cfg.rewards
    profile = build_profile(rewards.profile, rewards.extra, rewards.weights)
    params = SamplingParams(
        num_generations=rollout.num_generations,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        stop_strings=("</answer>",) if rollout.stop_at_answer else (),
    )
    groups = []
    for start in range(0, len(questions), rollout.batch_questions):
        chunk = questions[start : start + rollout.batch_questions]
        seeds = [derive_seed(ctx.cfg.seed, ctx.stage.name, unit, sample.id) for _, sample in chunk]
        outputs = engine.generate([ctx.encode(sample) for _, sample in chunk], params, seeds=seeds)
        for (q, sample), out in zip(chunk, outputs):
            scores = [profile.score(r.text, sample) for r in out.responses]
            groups.append(
                ScoredGroup(
                    sample_id=sample.id,
                    question=q,
                    token_ids=[r.token_ids for r in out.responses],
                    logprobs=[r.logprobs for r in out.responses],
                    texts=[r.text for r in out.responses],
                    finish=[r.finish_reason for r in out.responses],
                    rewards=[{k: float(v) for k, v in s.items()} for s in scores],
                    totals=[float(s["total"]) for s in scores],
                    prompt_tokens=out.prompt_tokens,
                )
            )
    return groups


def assign_advantages(groups: list[ScoredGroup], grpo: Any) -> None:
    """Group advantages, then the optional online filter (equal-reward groups, accuracy band)."""
    for g in groups:
        g.advantages = group_advantages(torch.tensor([g.totals], dtype=torch.float64), estimator=grpo.advantage)[0].tolist()
        accuracy = sum(r.get("accuracy", 0.0) for r in g.rewards) / len(g.rewards)
        if grpo.filter_equal_groups and max(g.totals) - min(g.totals) < 1e-9:
            g.kept = False
        if grpo.accuracy_band is not None and not grpo.accuracy_band[0] <= accuracy <= grpo.accuracy_band[1]:
            g.kept = False


def to_rollouts(ctx: StageContext, groups: list[ScoredGroup], unit: int, policy_version: int) -> list[Rollout]:
    tokenizer = ctx.policy.tokenizer
    out = []
    for g in groups:
        for i, text in enumerate(g.texts):
            parsed = parse_completion(text)
            thinking_tokens = len(tokenizer(parsed.thinking, add_special_tokens=False)["input_ids"]) if parsed.thinking else 0
            out.append(
                Rollout(
                    id=f"{g.sample_id}/{ctx.stage.name}/{unit}/{i}",
                    sample_id=g.sample_id,
                    group_index=i,
                    text=text,
                    thinking=parsed.thinking,
                    answer=parsed.answer,
                    prompt_tokens=g.prompt_tokens,
                    response_tokens=len(g.token_ids[i]),
                    thinking_tokens=thinking_tokens,
                    truncated=g.finish[i] == "length",
                    rewards=g.rewards[i],
                    reward=g.totals[i],
                    advantage=float(g.advantages[i]) if g.kept else 0.0,
                    policy_version=policy_version,
                    stage=ctx.stage.name,
                    step=unit,
                    token_ids=g.token_ids[i],
                )
            )
    return out


def _padded(rows: list[list[float]] | list[list[int]], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    values = torch.zeros(len(rows), width, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        values[i, : len(r)] = torch.tensor(r, dtype=dtype)
        mask[i, : len(r)] = 1.0
    return values, mask


def optimizer_chunks(groups: list[ScoredGroup], per_step: int) -> list[list[tuple[int, int]]]:
    """(group, response) items of the kept groups, in order, cut into optimizer steps of ``per_step``."""
    items = [(gi, r) for gi, g in enumerate(groups) if g.kept for r in range(len(g.texts))]
    return [items[i : i + per_step] for i in range(0, len(items), per_step)]


def loss_normaliser(groups: list[ScoredGroup], chunk: list[tuple[int, int]], mode: str, norm_constant: float) -> float:
    """The global denominator of the chunk's loss, so per-group shares add up to the aggregated loss."""
    if mode == "token-mean":
        return float(sum(len(groups[gi].token_ids[r]) for gi, r in chunk))
    if mode == "seq-mean-token-sum-norm":
        return float(len(chunk) * norm_constant)
    return float(len(chunk))  # seq-mean-token-mean: per-row token means, averaged over rows


def train_step(
    ctx: StageContext,
    groups: list[ScoredGroup],
    chunk: list[tuple[int, int]],
    samples: dict[str, Sample],
    ref_model: torch.nn.Module | None,
) -> dict[str, float]:
    """Forward/backward of this rank's share of one optimizer step's responses (grads accumulate)."""
    grpo, model = ctx.section("grpo"), ctx.policy.model
    rollout = ctx.section("rollout")
    norm_constant = float(rollout.max_new_tokens)
    temperature = rollout.temperature  # train the policy that sampled the rollouts (as TRL and verl do)
    denominator = loss_normaliser(groups, chunk, grpo.loss_agg, norm_constant)
    mine = {g.question for g in groups if g.question % ctx.dist.world == ctx.dist.rank}
    by_group: dict[int, list[int]] = {}
    for gi, r in chunk:
        if groups[gi].question in mine:
            by_group.setdefault(gi, []).append(r)
    sums = {"clip": 0.0, "kl": 0.0, "entropy": 0.0, "tokens": 0.0, "loss": 0.0}
    calls = list(by_group.items())
    counts = [micro_batch_count(len(rows), grpo.response_micro_batch) for _, rows in calls]
    for (gi, rows), micro_batches in lockstep_calls(ctx.dist, model, calls, counts, shared_prefix=grpo.shared_prefix):
        g = groups[gi]
        prompt = ctx.encode(samples[g.sample_id])
        ids, mask = _padded([g.token_ids[r] for r in rows], torch.long)
        old, _ = _padded([g.logprobs[r] for r in rows], torch.float32)
        adv = torch.tensor([g.advantages[r] for r in rows], dtype=torch.float32)
        ref = None
        if ref_model is not None:
            ref = response_log_probs(ref_model, prompt, ids, mask, shared_prefix=grpo.shared_prefix,
                                     temperature=temperature).log_probs

        def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, sel: torch.Tensor) -> torch.Tensor:
            m = mask[sel]
            per_token, metrics = clipped_policy_loss(
                logp, old[sel], adv[sel], m, clip_low=grpo.clip_low, clip_high=grpo.clip_high, dual_clip=grpo.dual_clip
            )
            if ref is not None:
                per_token = per_token + grpo.kl_coef * kl_divergence(logp, ref[sel], grpo.kl_estimator) * m
                sums["kl"] += float((kl_divergence(logp.detach(), ref[sel], grpo.kl_estimator) * m).sum())
            else:
                sums["kl"] += float(((old[sel] - logp.detach()) * m).sum())  # approx KL to the sampler
            n_tok = float(m.sum())
            sums["clip"] += float(metrics["clip_fraction"]) * n_tok
            if entropy is not None:
                sums["entropy"] += float((entropy.detach() * m).sum())
            sums["tokens"] += n_tok
            if grpo.loss_agg == "seq-mean-token-mean":
                share = (per_token.sum(-1) / m.sum(-1).clamp(min=1)).sum()
            else:
                share = per_token.sum()
            share = share / denominator
            sums["loss"] += float(share.detach())
            return share

        backward_group(
            model, prompt, ids, mask, loss_fn,
            micro_batch=grpo.response_micro_batch, shared_prefix=grpo.shared_prefix, with_entropy=True,
            temperature=temperature, min_micro_batches=micro_batches,
        )
    return sums


def _batch_metrics(groups: list[ScoredGroup], rollouts: list[Rollout]) -> dict[str, float]:
    n = max(1, len(rollouts))
    return {
        "reward_mean": sum(r.reward for r in rollouts) / n,
        "accuracy_mean": sum(r.rewards.get("accuracy", 0.0) for r in rollouts) / n,
        "format_rate": sum(1.0 for r in rollouts if r.rewards.get("format", 0.0) > 0) / n,
        "response_len": sum(r.response_tokens for r in rollouts) / n,
        "thinking_len": sum(r.thinking_tokens for r in rollouts) / n,
        "truncated_rate": sum(1.0 for r in rollouts if r.truncated) / n,
        "groups_kept": float(sum(g.kept for g in groups)),
    }


def run_grpo(ctx: StageContext) -> StageResult:
    grpo, rollout_cfg = ctx.section("grpo"), ctx.section("rollout")
    model, tokenizer = ctx.policy.model, ctx.policy.tokenizer
    responses_per_batch = grpo.rollout_batch_size * rollout_cfg.num_generations
    steps_per_batch = responses_per_batch // grpo.global_batch_size
    total_steps = grpo.rollout_batches * steps_per_batch
    optimizer = ctx.optimizer(grpo.lr, grpo.weight_decay, grpo.max_grad_norm)
    scheduler = build_scheduler(optimizer, grpo.lr_schedule, grpo.warmup_steps, total_steps)
    progress = resume_stage(ctx, optimizer, scheduler, OUTPUTS)
    if progress.done:
        return StageResult(steps=progress.step, outputs={n: ctx.stage_dir / n for n in OUTPUTS},
                           numbers={"wall_time_s": progress.extra.get("time_s", 0.0)})
    ref_model = None
    # weight sharding may come from an accelerate launch, which the config check cannot see
    if grpo.kl_coef > 0 and (is_weight_sharded(model) or every_rank_runs_every_pass(model)):
        raise ValueError(f"stage '{ctx.stage.name}': grpo.kl_coef > 0 needs a frozen whole copy of the policy on "
                         "every rank, which weight sharding (FSDP2, DeepSpeed ZeRO-3) is meant to avoid; set "
                         "grpo.kl_coef=0")
    if grpo.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # the stage-start policy
        if progress.unit > 0:
            ctx.log("note: kl_coef > 0 on resume uses the resumed weights as the reference")
    engine = HFRolloutEngine(model, tokenizer, max_batch_questions=rollout_cfg.batch_questions)
    by_id = {s.id: s for s in ctx.samples}
    clock = Stopwatch(progress.extra.get("time_s", 0.0))
    model.train()
    writers = [JsonlWriter(ctx.stage_dir / n, fsync="batch") for n in OUTPUTS] if ctx.dist.is_main else []
    for w in writers:
        w.open()
    rollouts_w, metrics_w, stats_w = writers if writers else (None, None, None)
    try:
        # a time budget ends the stage by the clock: no total, so no made-up time remaining
        title, total = ((f"GRPO {ctx.stage.name} ({grpo.time_budget_s:.0f} s budget)", None) if grpo.time_budget_s
                        else (f"GRPO {ctx.stage.name}", grpo.rollout_batches))
        with progress_bar(title, total, ctx.show_progress and ctx.dist.is_main) as bar:
            bar.set_completed(progress.unit)
            for unit in range(progress.unit, grpo.rollout_batches):
                questions = batch_questions(ctx.samples, unit, grpo.rollout_batch_size, ctx.cfg.seed, ctx.stage.name)
                mine = ctx.dist.shard(list(enumerate(questions)))
                with gathered_weights(model):
                    scored = sample_and_score(ctx, engine, mine, unit)
                groups = gather_objects(ctx.dist, scored)
                groups.sort(key=lambda g: g.question)
                assign_advantages(groups, grpo)
                rollouts = to_rollouts(ctx, groups, unit, policy_version=progress.global_step)
                batch = _batch_metrics(groups, rollouts)
                if ctx.dist.is_main:
                    rollouts_w.write_many(rollouts)
                    for g in groups:
                        acc = [r.get("accuracy", 0.0) for r in g.rewards]
                        stats_w.write({"sample_id": g.sample_id, "stage": ctx.stage.name, "step": unit,
                                       "n": len(acc), "correct": sum(a >= 1.0 - 1e-9 for a in acc),
                                       "accuracy_mean": sum(acc) / len(acc),
                                       "reward_mean": sum(g.totals) / len(g.totals)})
                for chunk in optimizer_chunks(groups, grpo.global_batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    sums = train_step(ctx, groups, chunk, by_id, ref_model)
                    totals = gather_objects(ctx.dist, [sums])
                    grad_norm, lr = optimizer_step(ctx, optimizer, scheduler, grpo.max_grad_norm, progress)
                    tokens = max(1.0, sum(t["tokens"] for t in totals))
                    row = {
                        "stage": ctx.stage.name, "kind": "grpo", "step": progress.step,
                        "global_step": progress.global_step, "rollout_batch": unit, "lr": lr,
                        "loss": sum(t["loss"] for t in totals), "grad_norm": grad_norm,
                        "kl": sum(t["kl"] for t in totals) / tokens,
                        "clip_frac": sum(t["clip"] for t in totals) / tokens,
                        "entropy": sum(t["entropy"] for t in totals) / tokens,
                        **batch, "time_s": clock.elapsed(),
                    }
                    if metrics_w is not None:
                        metrics_w.write(row)
                progress.unit = unit + 1
                bar.advance(1, acc=batch["accuracy_mean"], reward=batch["reward_mean"], len=batch["response_len"])
                over_budget = grpo.time_budget_s is not None and clock.elapsed() >= grpo.time_budget_s
                last = progress.unit == grpo.rollout_batches or any(gather_objects(ctx.dist, [over_budget]))
                save_if_due(ctx, progress, last=last, every=grpo.save_every, writers=writers, optimizer=optimizer,
                            scheduler=scheduler, outputs=OUTPUTS, clock=clock)
                if last:
                    break
    finally:
        for w in writers:
            w.close()
    return StageResult(steps=progress.step, outputs={n: ctx.stage_dir / n for n in OUTPUTS},
                       numbers={"wall_time_s": clock.elapsed()})
