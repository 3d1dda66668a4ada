"""GRPO phase ("Group-Slow-Search" in the VerIPO paper): explore with G sampled rollouts per question.

Per rollout batch of Q questions:
  1. sample G responses per question (prompt, video included, prefilled once per question);
  2. score every response with the configured reward profile (rule rewards: accuracy + format);
  3. group advantages ``(r_i - mean(r)) / (std(r) + eps)`` (or Dr. GRPO / RLOO), optionally dropping groups
     whose rewards are all equal or whose accuracy is outside a band;
  4. append every rollout (text, rewards, advantage, policy version) to ``rollouts.jsonl``: the verifier's
     input; per-question accuracy to ``question_stats.jsonl``: the easy-sample discard's input;
  5. ``Q*G / global_batch_size`` optimizer steps of the registered policy loss (``grpo.policy_loss``, aggregated
     by ``grpo.loss_agg``; ``veripo.algos.policy_loss.policy_loss``) against the sampling policy's log-probs,
     each group backpropagating its share of the step's loss (``BatchNorms``); each group's prompt runs once and
     its responses against the prompt's KV cache (``grpo.shared_prefix``; ``false`` is the per-sequence
     baseline), ``grpo.micro_batch_size`` responses per forward/backward.

What it is not: no value model, no reference model unless ``grpo.kl_coef > 0`` (then the policy at the
start of the stage is kept frozen), old log-probs come from the sampler (exact for the transformers
engine in fp32; they equal a teacher-forced forward to ~1e-6; the vLLM engine's: ``veripo.rollout.vllm_engine``).
The engine is ``rollout.engine``'s (``veripo.rollout.registry``); before each rollout batch it is synced to the
policy (a no-op for the transformers engine, a weight push for vLLM) and released after.

Resume: a checkpoint after every ``save_every`` rollout batches; every random draw is seeded from the run
seed, the stage and the batch index, so a resumed stage redoes exactly the work that was lost.
Several processes: questions are split over ranks; see ``veripo.parallel``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from veripo.algos.advantages import group_advantages
from veripo.algos.kl import kl_divergence
from veripo.algos.policy_loss import BatchNorms, aggregate_loss, policy_loss
from veripo.data.records import Rollout, Sample
from veripo.models.grouped_forward import backward_group, micro_batch_count, response_log_probs
from veripo.recipes.common import derive_seed, generator
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.stage_loop import Optimization, StageLoop, run_training_stage
from veripo.rewards import parse_completion
from veripo.rewards.profiles import build_profile
from veripo.rollout import RolloutEngine, SamplingParams
from veripo.rollout.registry import make_engine

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


def sample_and_score(ctx: StageContext, engine: RolloutEngine, questions: list[tuple[int, Sample]], unit: int) -> list[ScoredGroup]:
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


def chunk_norms(groups: list[ScoredGroup], chunk: list[tuple[int, int]], norm_constant: float) -> BatchNorms:
    """The normalisers of one optimizer step's responses (all ranks'), so each group's loss is its share."""
    lengths = [len(groups[gi].token_ids[r]) for gi, r in chunk]
    return BatchNorms(tokens=float(sum(lengths)), sequences=float(sum(n > 0 for n in lengths)),
                      rows=float(len(chunk)), norm_constant=norm_constant)


def group_policy_loss(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                      ref: torch.Tensor | None, grpo: Any, norms: BatchNorms) -> tuple[torch.Tensor, dict[str, float]]:
    """A group's (or micro-batch's) share of the step's loss: the registered policy loss with its aggregation,
    plus ``kl_coef`` times the aggregated KL to the reference when there is one; and its metric sums."""
    loss, metrics = policy_loss(logp, old, adv, mask, loss_type=grpo.policy_loss, loss_agg_mode=grpo.loss_agg,
                                norms=norms, clip_low=grpo.clip_low, clip_high=grpo.clip_high, dual_clip=grpo.dual_clip)
    n_tok = float(mask.sum())
    sums = {"clip": float(metrics["clip_fraction"]) * n_tok, "tokens": n_tok}
    if ref is not None:
        kl = kl_divergence(logp, ref, grpo.kl_estimator)
        loss = loss + grpo.kl_coef * aggregate_loss(kl * mask, mask, grpo.loss_agg, norms=norms)
        sums["kl"] = float((kl.detach() * mask).sum())
    else:
        sums["kl"] = float(((old - logp.detach()) * mask).sum())  # approx KL to the sampler
    return loss, sums


class GRPOStage:
    """A rollout batch of ``grpo.rollout_batch_size`` questions is one unit: sampled, scored, written, then cut
    into optimizer steps of ``grpo.global_batch_size`` responses."""

    outputs = ["metrics.jsonl", "rollouts.jsonl", "question_stats.jsonl"]

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.grpo, self.rollout = ctx, ctx.section("grpo"), ctx.section("rollout")
        grpo = self.grpo
        self.units = grpo.rollout_batches
        self.steps = grpo.rollout_batches * (grpo.rollout_batch_size * self.rollout.num_generations
                                             // grpo.global_batch_size)
        self.time_budget_s = grpo.time_budget_s
        self.title = (f"GRPO {ctx.stage.name} ({grpo.time_budget_s:.0f} s budget)" if grpo.time_budget_s
                      else f"GRPO {ctx.stage.name}")
        self.by_id = {s.id: s for s in ctx.samples}
        self.ref_model: torch.nn.Module | None = None
        self.engine: RolloutEngine | None = None

    def numbers(self) -> dict[str, Any]:
        return {}

    def start(self, loop: StageLoop) -> None:
        ctx, grpo, model = self.ctx, self.grpo, self.ctx.policy.model
        # weight sharding may come from an accelerate launch, which the config check cannot see
        if grpo.kl_coef > 0 and ctx.parallel.shards_weights:
            raise ValueError(f"stage '{ctx.stage.name}': grpo.kl_coef > 0 needs a frozen whole copy of the policy on "
                             "every rank, which weight sharding (FSDP2, DeepSpeed ZeRO-3) is meant to avoid; set "
                             "grpo.kl_coef=0")
        if self.rollout.engine == "vllm" and ctx.parallel.shards_weights:
            raise ValueError(f"stage '{ctx.stage.name}': rollout.engine vllm with weight sharding (FSDP2, DeepSpeed "
                             "ZeRO-3) is not supported yet: every rank's vLLM needs whole weights pushed; use "
                             "rollout.engine hf, or data parallel without weight sharding")
        if grpo.kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # the stage-start policy
            if loop.progress.unit > 0:
                ctx.log("note: kl_coef > 0 on resume uses the resumed weights as the reference")
        self.engine = make_engine(ctx.policy, self.rollout, seed=ctx.cfg.seed, dtype=ctx.cfg.model.dtype,
                                  rank=ctx.dist.rank, world=ctx.dist.world)

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        ctx, grpo = self.ctx, self.grpo
        questions = batch_questions(ctx.samples, unit, grpo.rollout_batch_size, ctx.cfg.seed, ctx.stage.name)
        mine = ctx.dist.shard(list(enumerate(questions)))
        with ctx.parallel.gathered_weights():
            # an engine with its own copy of the weights (vLLM) gets the policy as the last optimizer step left it
            self.engine.sync_weights(ctx.policy.model, loop.progress.global_step)
            scored = sample_and_score(ctx, self.engine, mine, unit)
        self.engine.release()
        groups = ctx.parallel.gather(scored)
        groups.sort(key=lambda g: g.question)
        assign_advantages(groups, grpo)
        rollouts = to_rollouts(ctx, groups, unit, policy_version=loop.progress.global_step)
        batch = _batch_metrics(groups, rollouts)
        loop.write_many("rollouts.jsonl", rollouts)
        for g in groups:
            acc = [r.get("accuracy", 0.0) for r in g.rewards]
            loop.write("question_stats.jsonl", {
                "sample_id": g.sample_id, "stage": ctx.stage.name, "step": unit, "n": len(acc),
                "correct": sum(a >= 1.0 - 1e-9 for a in acc), "accuracy_mean": sum(acc) / len(acc),
                "reward_mean": sum(g.totals) / len(g.totals)})
        for chunk in optimizer_chunks(groups, grpo.global_batch_size):
            totals, grad_norm, lr = self.optimizer_step(loop, groups, chunk)
            tokens = max(1.0, sum(t["tokens"] for t in totals))
            loop.metrics_row(
                "grpo", rollout_batch=unit, lr=lr, loss=sum(t["loss"] for t in totals), grad_norm=grad_norm,
                kl=sum(t["kl"] for t in totals) / tokens, clip_frac=sum(t["clip"] for t in totals) / tokens,
                entropy=sum(t["entropy"] for t in totals) / tokens, **batch)
        return {"acc": batch["accuracy_mean"], "reward": batch["reward_mean"], "len": batch["response_len"]}

    def optimizer_step(self, loop: StageLoop, groups: list[ScoredGroup],
                       chunk: list[tuple[int, int]]) -> tuple[list[dict[str, float]], float, float]:
        """One optimizer step on the ``chunk``'s responses: this rank's groups backpropagate their shares;
        every rank's metric sums, the gradient norm and the lr."""
        ctx, grpo, model = self.ctx, self.grpo, self.ctx.policy.model
        temperature = self.rollout.temperature  # train the policy that sampled the rollouts (as TRL and verl do)
        norms = chunk_norms(groups, chunk, float(self.rollout.max_new_tokens))
        mine = {g.question for g in groups if g.question % ctx.dist.world == ctx.dist.rank}
        by_group: dict[int, list[int]] = {}
        for gi, r in chunk:
            if groups[gi].question in mine:
                by_group.setdefault(gi, []).append(r)
        sums = {"clip": 0.0, "kl": 0.0, "entropy": 0.0, "tokens": 0.0, "loss": 0.0}
        calls = list(by_group.items())

        def backward(call: tuple[int, list[int]], micro_batches: int) -> None:
            gi, rows = call
            g = groups[gi]
            prompt = ctx.encode(self.by_id[g.sample_id])
            ids, mask = _padded([g.token_ids[r] for r in rows], torch.long)
            old, _ = _padded([g.logprobs[r] for r in rows], torch.float32)
            adv = torch.tensor([g.advantages[r] for r in rows], dtype=torch.float32)
            ref = None
            if self.ref_model is not None:
                ref = response_log_probs(self.ref_model, prompt, ids, mask, shared_prefix=grpo.shared_prefix,
                                         temperature=temperature).log_probs

            def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, sel: torch.Tensor) -> torch.Tensor:
                m = mask[sel]
                share, metric_sums = group_policy_loss(logp, old[sel], adv[sel], m,
                                                       None if ref is None else ref[sel], grpo, norms)
                for key, value in metric_sums.items():
                    sums[key] += value
                if entropy is not None:
                    sums["entropy"] += float((entropy.detach() * m).sum())
                sums["loss"] += float(share.detach())
                return share

            backward_group(model, prompt, ids, mask, loss_fn, micro_batch=grpo.micro_batch_size,
                           shared_prefix=grpo.shared_prefix, with_entropy=True, temperature=temperature,
                           min_micro_batches=micro_batches, passes=ctx.parallel.passes)

        counts = [micro_batch_count(len(rows), grpo.micro_batch_size) for _, rows in calls]
        grad_norm, lr = loop.optimizer_step(calls, counts, grpo.shared_prefix, backward)
        return ctx.parallel.gather([sums]), grad_norm, lr


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
    return run_training_stage(ctx, GRPOStage(ctx), Optimization.of(ctx.section("grpo")))
