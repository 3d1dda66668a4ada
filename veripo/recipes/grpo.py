"""GRPO phase ("Group-Slow-Search" in the VerIPO paper): explore with G sampled rollouts per question.

Per rollout batch of Q questions (the next Q of the stage's seeded question stream, ``grpo_sampling``):
  1. sample G responses per question (prompt, video included, prefilled once per question);
  2. score every response with the configured reward profile (rule rewards: accuracy + format, the gated
     length bonus; ``rewards`` in the config), DAPO's overlong penalty (``grpo.overlong_buffer``) and
     Video-R1's temporal bonus (``grpo.temporal``: each video question is also sampled on shuffled frames);
  3. group advantages ``(r_i - mean(r)) / (std(r) + eps)`` (or Dr. GRPO / RLOO), optionally dropping groups
     whose rewards are all equal or whose accuracy is outside a band; with ``grpo.dynamic_sampling`` (DAPO)
     more questions are sampled until Q groups are kept (at most ``grpo.max_resample_rounds`` extra rounds);
  4. append every rollout (text, rewards, advantage, policy version) to ``rollouts.jsonl``: the verifier's
     input; per-question accuracy to ``question_stats.jsonl``: the easy-sample discard's input;
  5. ``Q*G / global_batch_size`` optimizer steps of the registered policy loss (``grpo.policy_loss``, aggregated
     by ``grpo.loss_agg``; ``veripo.algos.policy_loss.policy_loss``) against the sampling policy's log-probs,
     each group backpropagating its share of the step's loss (``BatchNorms``); each group's prompt runs once and
     its responses against the prompt's KV cache (``grpo.shared_prefix``; ``false`` is the per-sequence
     baseline), ``grpo.micro_batch_size`` responses and at most ``grpo.max_tokens_per_micro_batch`` tokens per
     forward/backward (``veripo.models.micro_batches``); ``grpo.overlong_filter`` leaves truncated responses out
     of the loss (DAPO). With several processes the step's groups go to ranks by token count
     (``distributed.balance_tokens``; ``veripo.parallel.balance``), the imbalance logged as ``rank_imbalance``.

What it is not: no value model, no reference model unless ``grpo.kl_coef > 0`` (then the policy at the
start of the stage is kept frozen). The engine is ``rollout.engine``'s (``veripo.rollout.registry``); before each
rollout batch it is synced to the policy (a no-op for the transformers engine, a weight push for vLLM) and
released after.

Old log-probs (the ratio's denominator): the sampler's, or with ``grpo.recompute_old_logprobs`` the trainer's
own no-grad forward of every response right after sampling, with the weights that sampled them (as verl's
actor recomputes ``old_log_prob`` after rollout: verl/trainer/ppo/ray_trainer.py, ``compute_log_prob``).
"auto" recomputes unless the sampler is the trainer's own forward in the same dtype: the transformers engine
in float32 compute, where the sampler's log-probs equal a teacher-forced forward to ~1e-6. In bf16 its KV-cached
decoding rounds differently from the training pass. Every optimizer step logs the sampler/trainer gap,
``logprob_gap_mean`` and ``logprob_gap_max`` (absolute difference over the step's response tokens; the
trainer's side is the recomputed log-prob, or without recomputation the step's own forward, which equals the
sampling policy only at a rollout batch's first step), next to ``clip_frac``, the share of clipped tokens.

Resume: a checkpoint after every ``save_every`` rollout batches, with the count of questions drawn so far
(``questions_drawn``, resampled ones included); every random draw is seeded from the run seed, the stage, the
batch index and the resampling round, so a resumed stage redoes exactly the work that was lost.
Several processes: questions are split over ranks; see ``veripo.parallel``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from veripo.algos.advantages import group_advantages
from veripo.algos.kl import kl_divergence
from veripo.algos.policy_loss import BatchNorms, aggregate_loss, policy_loss
from veripo.config import ConfigError
from veripo.errors import UnusableSample
from veripo.parallel.balance import imbalance, rank_split
from veripo.data.jsonl import read_jsonl
from veripo.data.records import Rollout, Sample
from veripo.models.grouped_forward import backward_group, micro_batch_plan, response_log_probs, work_tokens
from veripo.recipes.checkpoint import Progress
from veripo.recipes.common import derive_seed
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.grpo_sampling import draw_questions, fill_batch
from veripo.recipes.sizing import grpo_size
from veripo.recipes.sources import SKIPPED_FILE, check_bad_share
from veripo.recipes.stage_loop import Optimization, StageLoop, run_training_stage
from veripo.rewards import parse_completion
from veripo.rewards.group import overlong_penalty, temporal_bonus
from veripo.rewards.profiles import profile_for
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
    thinking_tokens: list[int]
    advantages: list[float] | None = None
    kept: bool = True
    round: int = 0  # dynamic sampling's round that drew it (0: the batch's first)
    shuffled_accuracy: float | None = None  # T-GRPO: mean accuracy on the shuffled frames
    trainer_logprobs: list[list[float]] | None = None  # the trainer's recomputed old log-probs, when recomputed


def recomputes_old_logprobs(setting: bool | str, engine: str, compute_dtype: str) -> bool:
    """``grpo.recompute_old_logprobs`` resolved: "auto" is on unless the sampler is the trainer's own forward in
    the same dtype (the transformers engine in float32 compute)."""
    if setting == "auto":
        return not (engine == "hf" and compute_dtype == "float32")
    return bool(setting)



def sample_and_score(ctx: StageContext, engine: RolloutEngine, questions: list[tuple[int, Sample]], unit: int,
                     round_: int = 0, skipped: list[dict[str, Any]] | None = None) -> list[ScoredGroup]:
    """G responses per question, ``rollout.batch_questions`` questions per engine call, each question with
    its own seed (from the run seed, stage, batch, dynamic-sampling round and sample id: independent of the
    rank), then scored with the run's reward profile and DAPO's overlong penalty (``grpo.overlong_buffer``).
    A question whose prompt cannot be built (``UnusableSample``: unreadable media, a prompt over the token
    limit) gets no group; it is appended to ``skipped`` as ``{"sample_id", "reason", "rollout_batch"}``."""
    rollout, grpo = ctx.section("rollout"), ctx.section("grpo")
    profile = profile_for(ctx.cfg.rewards)
    params = SamplingParams(
        num_generations=rollout.num_generations,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        stop_strings=("</answer>",) if rollout.stop_at_answer else (),
    )
    groups = []
    for start in range(0, len(questions), rollout.batch_questions):
        chunk, prompts = [], []
        for q, sample in questions[start : start + rollout.batch_questions]:
            try:
                prompts.append(ctx.encode(sample))
                chunk.append((q, sample))
            except UnusableSample as e:
                if skipped is not None:
                    skipped.append({"sample_id": sample.id, "reason": str(e), "rollout_batch": unit})
        if not chunk:
            continue
        keys = (unit,) if round_ == 0 else (unit, f"round{round_}")
        seeds = [derive_seed(ctx.cfg.seed, ctx.stage.name, *keys, sample.id) for _, sample in chunk]
        outputs = engine.generate(prompts, params, seeds=seeds)
        shuffled = temporal_accuracies(ctx, engine, chunk, params, profile, keys) if grpo.temporal else {}
        for (q, sample), out in zip(chunk, outputs):
            thinking = [thinking_token_count(ctx.policy.tokenizer, r.text) for r in out.responses]
            scores = profile.score_group([r.text for r in out.responses], sample, thinking_tokens=thinking,
                                         response_tokens=[len(r.token_ids) for r in out.responses])
            add_grpo_shaping(scores, [len(r.token_ids) for r in out.responses], shuffled.get(sample.id), ctx,
                             profile.correct_threshold)
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
                    thinking_tokens=thinking,
                    round=round_,
                    shuffled_accuracy=(sum(shuffled[sample.id]) / len(shuffled[sample.id])
                                       if shuffled.get(sample.id) else None),
                )
            )
    return groups


def assign_advantages(groups: list[ScoredGroup], grpo: Any) -> None:
    """Group advantages, then the optional online filter (equal-reward groups, as dynamic sampling drops them;
    accuracy band)."""
    for g in groups:
        g.advantages = group_advantages(torch.tensor([g.totals], dtype=torch.float64), estimator=grpo.advantage)[0].tolist()
        accuracy = sum(r.get("accuracy", 0.0) for r in g.rewards) / len(g.rewards)
        equal = max(g.totals) - min(g.totals) < 1e-9 and len(g.totals) > 1  # DAPO keeps a group of one (verl)
        if (grpo.filter_equal_groups or grpo.dynamic_sampling) and equal:
            g.kept = False
        if grpo.accuracy_band is not None and not grpo.accuracy_band[0] <= accuracy <= grpo.accuracy_band[1]:
            g.kept = False


def add_grpo_shaping(scores: list[dict[str, float]], lengths: list[int], shuffled: list[float] | None,
                     ctx: StageContext, correct_threshold: float) -> None:
    """The GRPO stage's own reward terms, each a component added to the total: Video-R1's ``temporal`` bonus
    (with the shuffled-frame accuracies of a video question) and DAPO's ``overlong`` penalty."""
    grpo, rollout = ctx.section("grpo"), ctx.section("rollout")
    if shuffled is not None:
        bonus = temporal_bonus([s["accuracy"] for s in scores], shuffled, bonus=grpo.temporal_bonus,
                               ratio=grpo.temporal_ratio, correct_threshold=correct_threshold)
        for s, b in zip(scores, bonus):
            s["temporal"] = b
            s["total"] += b
    if grpo.overlong_buffer:
        for s, n in zip(scores, lengths):
            s["overlong"] = overlong_penalty(n, rollout.max_new_tokens, grpo.overlong_buffer, grpo.overlong_penalty)
            s["total"] += s["overlong"]


def temporal_accuracies(ctx: StageContext, engine: RolloutEngine, chunk: list[tuple[int, Sample]],
                        params: SamplingParams, profile: Any, keys: tuple) -> dict[str, list[float]]:
    """T-GRPO's second prompt: each video question of ``chunk`` on its frames in a seeded shuffled order, sampled
    ``grpo.temporal_generations`` times (prefilled once, like any prompt); the accuracy of every response, by
    sample id. Questions without a video are left out (Video-R1 shuffles videos only)."""
    grpo, num = ctx.section("grpo"), params.num_generations
    videos = [sample for _, sample in chunk if sample.video is not None]
    if not videos:
        return {}
    shuffled_params = dataclasses.replace(params, num_generations=grpo.temporal_generations or max(1, num // 2))
    prompts = [ctx.encode(s, shuffle_seed=derive_seed(ctx.cfg.seed, ctx.stage.name, *keys, "frames", s.id))
               for s in videos]
    seeds = [derive_seed(ctx.cfg.seed, ctx.stage.name, *keys, "shuffled", s.id) for s in videos]
    outputs = engine.generate(prompts, shuffled_params, seeds=seeds)
    return {s.id: [profile.score(r.text, s)["accuracy"] for r in out.responses] for s, out in zip(videos, outputs)}


def thinking_token_count(tokenizer: Any, text: str) -> int:
    """Tokens of a response's thinking (0 without a think block)."""
    thinking = parse_completion(text).thinking
    return len(tokenizer(thinking, add_special_tokens=False)["input_ids"]) if thinking else 0


def to_rollouts(ctx: StageContext, groups: list[ScoredGroup], unit: int, policy_version: int) -> list[Rollout]:
    out = []
    for g in groups:
        for i, text in enumerate(g.texts):
            parsed = parse_completion(text)
            batch_key = unit if g.round == 0 else f"{unit}.{g.round}"  # a question drawn twice stays two groups
            out.append(
                Rollout(
                    id=f"{g.sample_id}/{ctx.stage.name}/{batch_key}/{i}",
                    sample_id=g.sample_id,
                    group_index=i,
                    text=text,
                    thinking=parsed.thinking,
                    answer=parsed.answer,
                    prompt_tokens=g.prompt_tokens,
                    response_tokens=len(g.token_ids[i]),
                    thinking_tokens=g.thinking_tokens[i],
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


def trains_on(group: ScoredGroup, response: int, overlong_filter: bool) -> bool:
    """Whether a response's tokens enter the loss: DAPO's overlong filtering masks truncated ones."""
    return not (overlong_filter and group.finish[response] == "length")


def chunk_norms(groups: list[ScoredGroup], chunk: list[tuple[int, int]], norm_constant: float,
                overlong_filter: bool = False) -> BatchNorms:
    """The normalisers of one optimizer step's responses (all ranks'), so each group's loss is its share; a
    response masked by the overlong filter counts as a row without tokens."""
    lengths = [len(groups[gi].token_ids[r]) if trains_on(groups[gi], r, overlong_filter) else 0 for gi, r in chunk]
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


# the question stream's counters in the stage's progress (checkpointed; numbers() puts them in the summary)
STREAM_COUNTERS = ("questions_drawn", "questions_resampled", "resample_rounds", "groups_dropped")


class GRPOStage:
    """A rollout batch of ``grpo.rollout_batch_size`` questions is one unit: sampled, scored, written, then cut
    into optimizer steps of ``grpo.global_batch_size`` responses; ``grpo.epochs`` / ``grpo.max_steps`` say how
    many (``veripo.recipes.sizing``)."""

    # skipped.jsonl: the questions drawn into a rollout batch whose prompt could not be built (checked as they are
    # drawn: a GRPO stage samples a share of its questions, so checking them all first could cost more than
    # the stage); more than max_bad_share of the stage's questions stops the run
    outputs = ["metrics.jsonl", "rollouts.jsonl", "question_stats.jsonl", SKIPPED_FILE]

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.grpo, self.rollout = ctx, ctx.section("grpo"), ctx.section("rollout")
        grpo = self.grpo
        if not ctx.samples:
            raise ValueError(f"stage '{ctx.stage.name}': no questions to sample (its data loaded none)")
        self.size = grpo_size(grpo, self.rollout.num_generations, len(ctx.samples))
        self.units, self.steps = self.size.units, self.size.steps
        # DAPO's resampled questions count toward the stage's epochs: with dynamic sampling a stage sized by epochs
        # ends once it has drawn epochs x its questions (its units are then an upper bound); by max_steps it runs
        # its steps
        epochs = grpo.epochs if grpo.epochs is not None else (
            1.0 if grpo.max_steps is None and grpo.rollout_batches is None else None)
        self.question_budget = (math.ceil(epochs * len(ctx.samples) - 1e-9)
                                if grpo.dynamic_sampling and epochs is not None else None)
        self.time_budget_s = grpo.time_budget_s
        self.title = (f"GRPO {ctx.stage.name} ({grpo.time_budget_s:.0f} s budget)" if grpo.time_budget_s
                      else f"GRPO {ctx.stage.name}")
        self.by_id = {s.id: s for s in ctx.samples}
        self.ref_model: torch.nn.Module | None = None
        self.engine: RolloutEngine | None = None
        self.bad: dict[str, str] = {}  # sample id -> why its prompt could not be built
        self.recompute = recomputes_old_logprobs(grpo.recompute_old_logprobs, self.rollout.engine,
                                                 ctx.cfg.model.dtype)

    def data_used(self, progress: Progress) -> bool:
        """The stage has drawn its epochs' questions (dynamic sampling by epochs only; ``question_budget``)."""
        return self.question_budget is not None and progress.extra.get("questions_drawn", 0) >= self.question_budget

    def numbers(self, progress: Progress) -> dict[str, Any]:
        """The stage's question-stream counters (kept in its checkpoints): questions drawn (resampled ones
        included), dynamic sampling's extra questions and rounds, and the groups it dropped."""
        return {key: progress.extra.get(key, 0) for key in STREAM_COUNTERS}

    def start(self, loop: StageLoop) -> None:
        ctx, grpo, model = self.ctx, self.grpo, self.ctx.policy.model
        # weight sharding may come from an accelerate launch, which the config check cannot see
        if grpo.kl_coef > 0 and ctx.parallel.shards_weights:
            raise ConfigError(f"stage '{ctx.stage.name}': grpo.kl_coef > 0 needs a frozen whole copy of the policy on "
                             "every rank, which weight sharding (FSDP2, DeepSpeed ZeRO-3) is meant to avoid; set "
                             "grpo.kl_coef=0")
        if grpo.kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # the stage-start policy
            if loop.progress.unit > 0:
                ctx.log("note: kl_coef > 0 on resume uses the resumed weights as the reference")
        if self.rollout.engine == "vllm" and ctx.parallel.shards_weights:
            raise ConfigError(f"stage '{ctx.stage.name}': rollout.engine vllm with weight sharding (FSDP2, DeepSpeed "
                              "ZeRO-3) is not supported yet: every rank's vLLM needs whole weights pushed; use "
                              "rollout.engine hf, or data parallel without weight sharding")
        self.engine = make_engine(ctx.policy, self.rollout, seed=ctx.cfg.seed, dtype=ctx.cfg.model.dtype,
                                  rank=ctx.dist.rank, world=ctx.dist.world)
        # a resumed stage counts the questions skipped before its checkpoint (the file is cut back to it)
        path = ctx.stage_dir / SKIPPED_FILE
        rows = read_jsonl(path) if ctx.dist.is_main and path.exists() else []
        self.bad = ctx.parallel.broadcast({row["sample_id"]: row["reason"] for row in rows})
        if loop.progress.unit == 0:
            source = "recomputed by the trainer" if self.recompute else "the sampler's"
            ctx.log(f"old log-probs: {source} "
                    f"(grpo.recompute_old_logprobs={grpo.recompute_old_logprobs}, model.dtype={ctx.cfg.model.dtype})")

    def trainer_log_probs(self, group: ScoredGroup) -> list[list[float]]:
        """The trainer's log-probs of a group's responses (no grad, the weights that sampled them)."""
        ids, mask = _padded(group.token_ids, torch.long)
        logp = response_log_probs(self.ctx.policy.model, self.ctx.encode(self.by_id[group.sample_id]), ids, mask,
                                  shared_prefix=self.grpo.shared_prefix, micro_batch=self.grpo.micro_batch_size,
                                  temperature=self.rollout.temperature).log_probs
        return [row[: len(tokens)].tolist() for row, tokens in zip(logp, group.token_ids)]

    def run_unit(self, unit: int, loop: StageLoop) -> dict[str, float]:
        ctx, grpo, size = self.ctx, self.grpo, self.grpo.rollout_batch_size
        counters = loop.progress.extra  # saved with every checkpoint, so a resumed stage continues the stream
        start = counters.get("questions_drawn", unit * size)

        def sample_round(round_: int, first: int) -> list[ScoredGroup]:
            questions = draw_questions(ctx.samples, start + first, size, ctx.cfg.seed, ctx.stage.name)
            mine = [(first + i, s) for i, s in enumerate(questions) if (first + i) % ctx.dist.world == ctx.dist.rank]
            skipped: list[dict[str, Any]] = []
            with ctx.parallel.gathered_weights():
                # an engine with its own copy of the weights (vLLM) gets the policy as the last optimizer step left it
                self.engine.sync_weights(ctx.policy.model, loop.progress.global_step)
                scored = sample_and_score(ctx, self.engine, mine, unit, round_, skipped)
                if self.recompute:
                    for g in scored:
                        g.trainer_logprobs = self.trainer_log_probs(g)
            self.engine.release()
            groups = ctx.parallel.gather(scored)
            self.count_skipped(ctx.parallel.gather(skipped), loop)
            groups.sort(key=lambda g: g.question)
            assign_advantages(groups, grpo)
            return groups

        filled = fill_batch(sample_round, size, dynamic=grpo.dynamic_sampling, max_rounds=grpo.max_resample_rounds)
        groups = filled.groups
        counters["questions_drawn"] = start + filled.drawn
        for key, value in (("questions_resampled", filled.drawn - size), ("resample_rounds", filled.rounds),
                           ("groups_dropped", filled.dropped)):
            counters[key] = counters.get(key, 0) + value
        if grpo.dynamic_sampling and filled.shortfall:
            ctx.log(f"rollout batch {unit}: {filled.shortfall} of {size} groups short after "
                    f"{filled.rounds} resample rounds (grpo.max_resample_rounds)")
        rollouts = to_rollouts(ctx, groups, unit, policy_version=loop.progress.global_step)
        batch = {**_batch_metrics(groups, rollouts), "questions_drawn": float(filled.drawn),
                 "resample_rounds": float(filled.rounds), "groups_dropped": float(filled.dropped)}
        loop.write_many("rollouts.jsonl", rollouts)
        threshold = profile_for(ctx.cfg.rewards).correct_threshold  # what the rewards count as correct
        for g in groups:
            acc = [r.get("accuracy", 0.0) for r in g.rewards]
            loop.write("question_stats.jsonl", {
                "sample_id": g.sample_id, "stage": ctx.stage.name, "step": unit, "n": len(acc),
                "correct": sum(a >= threshold for a in acc), "accuracy_mean": sum(acc) / len(acc),
                "reward_mean": sum(g.totals) / len(g.totals),
                **({} if g.shuffled_accuracy is None else {"shuffled_accuracy_mean": g.shuffled_accuracy})})
        for chunk in optimizer_chunks(groups, grpo.global_batch_size):
            totals, grad_norm, lr, balance = self.optimizer_step(loop, groups, chunk)
            tokens = max(1.0, sum(t["tokens"] for t in totals))
            over_budget = int(sum(t["over_budget"] for t in totals))
            if over_budget:
                ctx.log(f"rollout batch {unit}: {over_budget} responses over grpo.max_tokens_per_micro_batch "
                        f"({grpo.max_tokens_per_micro_batch}) with their prompt ran alone")
            loop.metrics_row(
                "grpo", rollout_batch=unit, lr=lr, loss=sum(t["loss"] for t in totals), grad_norm=grad_norm,
                kl=sum(t["kl"] for t in totals) / tokens, clip_frac=sum(t["clip"] for t in totals) / tokens,
                entropy=sum(t["entropy"] for t in totals) / tokens,
                logprob_gap_mean=sum(t["gap"] for t in totals) / tokens,
                logprob_gap_max=max(t["gap_max"] for t in totals),
                trained_tokens=sum(t["tokens"] for t in totals), over_budget_micro_batches=over_budget, **balance,
                old_logprobs="trainer" if self.recompute else "sampler", **batch)
        return {"acc": batch["accuracy_mean"], "reward": batch["reward_mean"], "len": batch["response_len"]}

    def count_skipped(self, skipped: list[dict[str, Any]], loop: StageLoop) -> None:
        """Log and record the questions this batch could not use; past ``max_bad_share`` of the stage's
        questions, stop (a DataError on every rank: they all saw the same gathered list)."""
        for row in skipped:
            if row["sample_id"] not in self.bad:
                self.bad[row["sample_id"]] = row["reason"]
                loop.write(SKIPPED_FILE, row)
                self.ctx.log(f"skipped question {row['sample_id']}: {row['reason']}")
        check_bad_share(len(self.bad), len(self.ctx.samples), self.ctx.cfg.max_bad_share, self.ctx.stage.name,
                        next(iter(self.bad.items()), None), self.ctx.stage_dir / SKIPPED_FILE)

    def optimizer_step(self, loop: StageLoop, groups: list[ScoredGroup],
                       chunk: list[tuple[int, int]]) -> tuple[list[dict[str, float]], float, float, dict[str, float]]:
        """One optimizer step on the ``chunk``'s responses: this rank's groups backpropagate their shares, in
        micro-batches by count and token budget (``micro_batch_plan``); the groups go to ranks by token count
        (``distributed.balance_tokens``, ``veripo.parallel.balance``). Every rank's metric sums, the gradient
        norm, the lr, and the ranks' token imbalance (max / mean) of the split used and of the by-question one."""
        ctx, grpo, model = self.ctx, self.grpo, self.ctx.policy.model
        temperature = self.rollout.temperature  # train the policy that sampled the rollouts (as TRL and verl do)
        norms = chunk_norms(groups, chunk, float(self.rollout.max_new_tokens), grpo.overlong_filter)
        by_group: dict[int, list[int]] = {}
        for gi, r in chunk:
            by_group.setdefault(gi, []).append(r)
        every = list(by_group.items())
        plans = [micro_batch_plan(model, groups[gi].prompt_tokens, [len(groups[gi].token_ids[r]) for r in rows],
                                  micro_batch=grpo.micro_batch_size, max_tokens=grpo.max_tokens_per_micro_batch,
                                  shared_prefix=grpo.shared_prefix) for gi, rows in every]
        work = [work_tokens(model, groups[gi].prompt_tokens, [len(groups[gi].token_ids[r]) for r in rows],
                            grpo.shared_prefix) for gi, rows in every]
        questions = [groups[gi].question for gi, _ in every]
        split = rank_split(work, ctx.dist.world, ctx.cfg.distributed.balance_tokens, questions)
        calls = [every[i] for i in split[ctx.dist.rank]]
        chunks = {gi: plans[i].chunks for i, (gi, _) in enumerate(every)}
        over_budget = sum(plans[i].over_budget for i in split[ctx.dist.rank])
        sums = {"clip": 0.0, "kl": 0.0, "entropy": 0.0, "tokens": 0.0, "loss": 0.0, "gap": 0.0, "gap_max": 0.0,
                "over_budget": float(over_budget)}

        def backward(call: tuple[int, list[int]], micro_batches: int) -> None:
            gi, rows = call
            g = groups[gi]
            prompt = ctx.encode(self.by_id[g.sample_id])
            ids, mask = _padded([g.token_ids[r] for r in rows], torch.long)
            # the loss's mask: the overlong filter leaves truncated responses out (the forward still runs them)
            trains = torch.tensor([trains_on(g, r, grpo.overlong_filter) for r in rows], dtype=mask.dtype)
            loss_mask = mask * trains[:, None]
            sampler, _ = _padded([g.logprobs[r] for r in rows], torch.float32)
            old = sampler if g.trainer_logprobs is None else _padded([g.trainer_logprobs[r] for r in rows],
                                                                      torch.float32)[0]
            adv = torch.tensor([g.advantages[r] for r in rows], dtype=torch.float32)
            ref = None
            if self.ref_model is not None:
                ref = response_log_probs(self.ref_model, prompt, ids, mask, shared_prefix=grpo.shared_prefix,
                                         temperature=temperature).log_probs

            def loss_fn(logp: torch.Tensor, entropy: torch.Tensor | None, sel: torch.Tensor) -> torch.Tensor:
                m = loss_mask[sel]
                trainer = logp.detach() if g.trainer_logprobs is None else old[sel]
                gap = (sampler[sel] - trainer).abs() * mask[sel]
                sums["gap"] += float(gap.sum())
                sums["gap_max"] = max(sums["gap_max"], float(gap.max()))
                share, metric_sums = group_policy_loss(logp, old[sel], adv[sel], m,
                                                       None if ref is None else ref[sel], grpo, norms)
                for key, value in metric_sums.items():
                    sums[key] += value
                if entropy is not None:
                    sums["entropy"] += float((entropy.detach() * m).sum())
                sums["loss"] += float(share.detach())
                return share

            backward_group(model, prompt, ids, mask, loss_fn, chunks=chunks[gi], shared_prefix=grpo.shared_prefix,
                           with_entropy=True, temperature=temperature, min_micro_batches=micro_batches,
                           passes=ctx.parallel.passes)

        counts = [len(chunks[gi]) for gi, _ in calls]
        grad_norm, lr = loop.optimizer_step(calls, counts, grpo.shared_prefix, backward)
        balance = {"rank_imbalance": imbalance(work, split),
                   "rank_imbalance_by_question": imbalance(work, rank_split(work, ctx.dist.world, False, questions))}
        return ctx.parallel.gather([sums]), grad_norm, lr, balance


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
