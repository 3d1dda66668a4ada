"""The config schema: one frozen dataclass per section. Defaults are the project's documented defaults.

Where the VerIPO paper publishes a value (Table 1) the default follows it; where it does not (KL, clip,
frames) the default follows the paper's framework lineage and the comment says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from veripo.config.core import ConfigError

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # a local model directory (from_pretrained) of a family in veripo.models.families
    build_tiny: Literal["tiny", "small"] | None = None  # build a random tiny model when path is missing
    family: Literal["qwen2.5-vl", "qwen3-vl", "qwen3.5"] = "qwen2.5-vl"  # the tiny model's (veripo.models.families)
    # The COMPUTE dtype: what rollouts, the training forward/backward and evaluation run in. 16-bit compute
    # with float32 master weights runs the matmuls under torch.autocast (FSDP2: MixedPrecisionPolicy for the
    # sharded layers; DeepSpeed: its bf16 config). float16 is refused: it needs loss scaling, not implemented.
    dtype: Dtype = "float32"
    # The MASTER dtype: the dtype of the weights the optimizer updates and of the AdamW state (and of the
    # weights in checkpoints). float32 (the default) keeps small updates: at lr 1e-6 most of a bf16 weight's
    # updates round away (tests/parallel/test_master_weights_on_cpu.py). Equal to a 16-bit `dtype`: pure 16-bit
    # training, weights and AdamW state in 16 bits (a negative control; loses most updates at the paper's lrs).
    master_dtype: Dtype = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    prompt: Literal["veripo", "videor1"] = "veripo"  # the training prompt template (veripo.models.prompts)
    # parts that never train: no gradient, no optimizer state (vision: the vision tower with its merger)
    freeze: tuple[Literal["vision"], ...] = ()
    # a prompt (text and visual tokens) longer than this is skipped and counted like unreadable media
    # (training and evaluation); Qwen2.5-VL at the media defaults (16 frames of 256 x 28 x 28 pixels) needs
    # about 2,100 tokens plus the question
    max_prompt_tokens: int = 16384
    # the vision tower's outputs per (media, frame settings, tower weights version), computed once and reused by
    # rollouts, evaluation and reference log-probs, and by every training pass when `freeze: [vision]`
    # (veripo.models.vision_cache; exact). Off under weight sharding (FSDP2, DeepSpeed ZeRO-3)
    vision_cache: bool = True
    vision_cache_memory_gib: float = 2.0  # features held in memory (on the model's device), least recent out first
    # what no longer fits in memory is written to <run>/vision-cache-rank<r>/ up to this size; null: dropped
    vision_cache_disk_gib: float | None = None

    def validate(self, prefix: str) -> None:
        if self.dtype == "float16":
            raise ConfigError(f"config key '{prefix}.dtype': float16 training needs loss scaling, which veripo does "
                              "not implement; use bfloat16 (same speed on GPUs since Ampere) or float32.")
        if self.master_dtype != "float32" and self.master_dtype != self.dtype:
            raise ConfigError(f"config key '{prefix}.master_dtype': {self.master_dtype!r} with model.dtype "
                              f"{self.dtype!r}; expected float32 (master weights for {self.dtype} compute) or "
                              f"{self.dtype!r} itself (pure {self.dtype} training).")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters through ``peft`` (``pip install 'veripo[lora]'``); the base weights stay frozen and only
    the adapters (and ``modules_to_save``) train. Defaults follow EasyR1's (examples/config.yaml ``lora``):
    every linear layer of the language model, the vision tower excluded."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    # peft's target_modules: "all-linear" or module-name suffixes ([q_proj, v_proj]); lm_head is never a target
    target_modules: str | tuple[str, ...] = "all-linear"
    exclude_modules: str | None = r".*visual.*"  # a regex over module names kept without adapters
    modules_to_save: tuple[str, ...] = ()  # whole modules trained and saved next to the adapters

    def validate(self, prefix: str) -> None:
        if self.rank < 1:
            raise ConfigError(f"config key '{prefix}.rank': got {self.rank}; expected a positive rank.")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"config key '{prefix}.alpha': got {self.alpha}; expected a positive finite number.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key '{prefix}.dropout': got {self.dropout}; expected 0 <= dropout < 1.")
        if not self.target_modules:
            raise ConfigError(f"config key '{prefix}.target_modules': empty; name at least one module or 'all-linear'.")


@dataclass(frozen=True)
class MediaConfig:
    fps: float = 2.0
    max_frames: int = 16
    min_frames: int = 2
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 256 * 28 * 28  # VerIPO eval default per frame
    cache_dir: str | None = None  # decoded-frame cache; None = <run dir>/../.veripo-cache

    def validate(self, prefix: str) -> None:
        if self.max_frames < self.min_frames or self.min_frames < 1:
            raise ConfigError(f"config key '{prefix}.max_frames': need 1 <= min_frames <= max_frames, got {self.min_frames}..{self.max_frames}.")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"config key '{prefix}.min_pixels': {self.min_pixels} is above max_pixels {self.max_pixels}.")


@dataclass(frozen=True)
class DataSource:
    # a Video-R1 / VerIPO JSON, a JSONL file or a synthetic dataset folder; or a Hugging Face dataset
    # (veripo.data.hf_datasets): parquet / Arrow files, a save_to_disk or data-file folder, hf:owner/name (Hub)
    path: str
    name: str | None = None
    media_root: str | None = None  # media paths resolve under this folder; None = the file's folder
    format: Literal["auto", "videor1", "videor1-eval", "veripo-eval", "jsonl", "hf"] = "auto"
    # Hugging Face datasets only: {veripo field: dataset column} (e.g. {problem: question, solution: label}),
    # the split, and lazy reading (no Arrow cache; `limit` stops the read)
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    streaming: bool = False
    on_error: Literal["skip", "fail"] = "skip"
    weight: float = 1.0
    limit: int | None = None
    # questions in the file, as declared (e.g. the paper's dataset sizes): `veripo plan` counts the file when it
    # is there and uses this when it is not
    size: int | None = None
    # generate a synthetic dataset folder at `path` (relative: under the run directory) when it is missing;
    # keys are veripo.data.synthetic.make_synthetic arguments: n, seed, kinds, size, frames, difficulties, tasks,
    # chain
    synthetic: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        for key in ("size", "limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key '{prefix}.{key}': got {value}; expected a positive number of questions "
                                  "or null.")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"config key '{prefix}.weight': got {self.weight}; expected a finite weight >= 0.")


@dataclass(frozen=True)
class RolloutConfig:
    # hf: transformers, prefill once per group (veripo.rollout.hf_engine); vllm: a colocated vLLM engine synced
    # with the policy before every rollout batch (veripo.rollout.vllm_engine; `pip install 'veripo[vllm]'`,
    # CUDA only, untested on GPU so far)
    engine: Literal["hf", "vllm"] = "hf"
    num_generations: int = 8  # G, responses per question (paper: 8)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    # questions sampled together per engine call (faster); their samples can then differ from one-at-a-time
    # sampling at float-rounding level (left padding), so data-parallel equivalence tests use 1
    batch_questions: int = 4
    stop_at_answer: bool = True  # stop a response at </answer>
    # vllm engine only: its share of GPU memory (weights + KV cache) next to training; sleep mode frees it
    # while the policy trains (weights pushed again at the next rollout batch); its context length (null:
    # the model's)
    vllm_gpu_memory_utilization: float = 0.4
    vllm_sleep: bool = True
    vllm_max_model_len: int | None = None

    def validate(self, prefix: str) -> None:
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"config key '{prefix}.vllm_gpu_memory_utilization': got "
                              f"{self.vllm_gpu_memory_utilization}; expected a share of GPU memory in (0, 1].")
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < 1:
            raise ConfigError(f"config key '{prefix}.vllm_max_model_len': got {self.vllm_max_model_len}; expected a "
                              "positive number of tokens or null.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"config key '{prefix}.top_p': got {self.top_p}; expected 0 < top_p <= 1.")


@dataclass(frozen=True)
class LengthRewardConfig:
    """Video-R1's length reward (veripo.rewards.group.length_band_bonus): ``bonus`` added to the total of a
    correct response (accuracy >= rewards.correct_threshold) whose length lies in [min_tokens, max_tokens], when
    at least ``min_correct`` responses of its group are correct. Video-R1: 0.2, 320..512, response, 2."""

    bonus: float = 0.0  # 0: off
    min_tokens: int = 320
    max_tokens: int = 512
    count: Literal["thinking", "response"] = "thinking"  # thinking tokens, or the whole response (Video-R1)
    min_correct: int = 2

    def validate(self, prefix: str) -> None:
        check_range(self.bonus, f"{prefix}.bonus")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(f"config key '{prefix}.min_tokens': need 0 <= min_tokens <= max_tokens, got "
                              f"{self.min_tokens}..{self.max_tokens}.")
        if self.min_correct < 1:
            raise ConfigError(f"config key '{prefix}.min_correct': got {self.min_correct}; expected >= 1.")


@dataclass(frozen=True)
class RewardConfig:
    profile: str = "veripo"  # a scoring profile from veripo.rewards (videor1-train, videor1-eval, veripo-eval, veripo)
    # extra rewards, by registry name or import path ("mypkg.rewards:my_reward", a function (completion, sample)
    # -> float), added to the profile's
    extra: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)  # per-reward weight overrides (accuracy, format, extras)
    # format as a gate (accuracy counts only with a positive format reward) or an additive term; "profile": the
    # profile's own rule (all shipped profiles: additive)
    format: Literal["profile", "additive", "gate"] = "profile"
    # accuracy reward at which a response counts as correct: the length and temporal bonuses, and the verifier
    # (unless verifier.correct_threshold overrides it)
    correct_threshold: float = 1.0
    length: LengthRewardConfig = field(default_factory=LengthRewardConfig)

    def validate(self, prefix: str) -> None:
        for name, weight in self.weights.items():
            check_range(weight, f"{prefix}.weights.{name}")
        check_range(self.correct_threshold, f"{prefix}.correct_threshold", low=0.0, high=1.0, low_open=True,
                    note="(accuracy rewards lie in [0, 1])")


@dataclass(frozen=True)
class GRPOConfig:
    lr: float = 1e-6
    rollout_batch_size: int = 64  # questions per rollout phase (paper Table 1)
    # responses per optimizer step (paper Table 1: 128 / 64 with 64 questions x 8 responses per rollout
    # batch, i.e. 4 / 8 optimizer steps per rollout batch; the reading that makes Table 1 consistent)
    global_batch_size: int = 64
    # responses per forward/backward within a question's group (null: all G at once); the group's prompt
    # still runs once (veripo.models.grouped_forward.backward_group)
    micro_batch_size: int | None = None
    # at most this many tokens per forward/backward within a group (null: no budget): the prompt's text and visual
    # tokens plus the responses padded to the longest in the micro-batch (per sequence: the prompt in every row),
    # responses packed longest first (veripo.models.micro_batches). With micro_batch_size too, a micro-batch keeps
    # both limits. A response over the budget on its own runs alone (counted: over_budget_micro_batches).
    # The gradient does not change: every micro-batch's loss carries the step's normalisers.
    max_tokens_per_micro_batch: int | None = None
    # how long the stage runs (veripo.recipes.sizing): `epochs` passes over its questions (may be fractional)
    # or `max_steps` optimizer steps (rounded up to whole rollout batches), whichever is given (both: the
    # shorter; neither: one epoch). A stage using under 5% of its questions is warned about.
    epochs: float | None = None
    max_steps: int | None = None
    rollout_batches: int | None = None  # deprecated: a fixed number of rollout batches (use epochs/max_steps)
    # evaluate on eval.heldout every this many optimizer steps, keeping the best checkpoint beside the last
    eval_every: int | None = None
    # algorithms by their registered names (veripo.algos registries; checked when a run starts)
    advantage: str = "grpo"  # grpo | drgrpo | rloo
    policy_loss: str = "clipped"  # clipped | gspo | cispo (veripo.algos.policy_loss.POLICY_LOSSES)
    # null: the loss's own range (clipped: 0.2/0.2, the lineage's, not published by the paper; gspo: 3e-4/4e-4,
    # the GSPO paper's; cispo: 1.0/4.0, no lower bound and TRL's eps_max 5); docs/algorithms.md
    clip_low: float | None = None
    clip_high: float | None = None
    dual_clip: float | None = None  # > 1: cap negative-advantage ratios (clipped, gspo) or weights (cispo) at c
    # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm (Dr. GRPO; its constant
    # is rollout.max_new_tokens)
    loss_agg: str = "token-mean"
    kl_coef: float = 0.0  # lineage default: no KL term
    kl_estimator: str = "k3"  # k1 | k2 | k3 | abs (veripo.algos.kl.KL_ESTIMATORS)
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay: float = 0.0
    shared_prefix: bool = True  # one prompt pass per group; False = per-sequence baseline
    filter_equal_groups: bool = False  # drop groups whose rewards are all equal (zero advantage)
    # DAPO (Yu et al. 2025): dynamic sampling drops equal-reward groups and samples more questions until the
    # rollout batch is full again, at most max_resample_rounds extra rounds of rollout_batch_size questions
    # (resampled questions count as drawn from the stage's data); overlong shaping subtracts up to
    # overlong_penalty over the last overlong_buffer tokens before rollout.max_new_tokens (0: off); the overlong
    # filter leaves truncated responses out of the loss
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    overlong_filter: bool = False
    # Video-R1's T-GRPO: each video question is also sampled on temporally shuffled frames (a second prompt,
    # temporal_generations responses, default num_generations // 2 as Video-R1), not trained on; the ordered
    # group's correct responses gain temporal_bonus when its accuracy >= temporal_ratio x the shuffled one's
    temporal: bool = False
    temporal_bonus: float = 0.3
    temporal_ratio: float = 0.8
    temporal_generations: int | None = None
    accuracy_band: tuple[float, float] | None = None  # keep groups whose mean accuracy lies in [lo, hi]
    save_every: int = 1  # rollout batches between checkpoints (the unit a killed run resumes from)
    save_every_s: float | None = None  # also checkpoint after the first rollout batch this many seconds past the last
    # GRPO's old log-probs (the ratio's denominator): true recomputes them with the trainer's own forward
    # (no grad, right after sampling, same weights); false takes the sampler's. "auto": recompute whenever the
    # sampler is not the trainer's own forward in the same dtype, i.e. unless the rollout engine is the
    # transformers one and the compute dtype (model.dtype) is float32; in 16-bit compute the sampler's
    # KV-cached decoding and the trainer's teacher-forced pass round differently. Every step logs the
    # sampler/trainer gap either way (logprob_gap_mean/max in metrics.jsonl; veripo.recipes.grpo).
    recompute_old_logprobs: bool | Literal["auto"] = "auto"
    # stop after the rollout batch that passes this many seconds (for equal-time comparisons; a run with a
    # time budget is not reproducible across machines or resumes)
    time_budget_s: float | None = None

    def validate(self, prefix: str) -> None:
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"config key '{prefix}.dual_clip': got {self.dual_clip}; expected a number above 1 "
                              "(the dual-clip bound c > 1) or null.")
        if self.accuracy_band is not None and not 0 <= self.accuracy_band[0] <= self.accuracy_band[1] <= 1:
            raise ConfigError(f"config key '{prefix}.accuracy_band': got {list(self.accuracy_band)}; expected "
                              "[low, high] with 0 <= low <= high <= 1.")
        if self.lr <= 0:
            raise ConfigError(f"config key '{prefix}.lr': got {self.lr}; expected a positive learning rate.")
        check_micro_batch(self.micro_batch_size, prefix)
        check_length(self, prefix)
        if self.rollout_batches is not None:
            if self.epochs is not None or self.max_steps is not None:
                raise ConfigError(f"config key '{prefix}.rollout_batches' (deprecated) with epochs or max_steps: "
                                  "give only epochs and/or max_steps")
            warnings.warn(f"config key '{prefix}.rollout_batches' is deprecated: a stage is sized by its data; use "
                          f"{prefix}.epochs (passes over the stage's questions) or {prefix}.max_steps (optimizer "
                          f"steps; {self.rollout_batches} rollout batches = max_steps "
                          f"{self.rollout_batches} x rollout_batch_size x num_generations / global_batch_size)",
                          FutureWarning, stacklevel=2)
        for key in ("clip_low", "clip_high"):
            check_range(getattr(self, key), f"{prefix}.{key}", low=0.0, note="or null for the loss's own range")
        if self.clip_low is not None and self.clip_low > 1.0:
            raise ConfigError(f"config key '{prefix}.clip_low': got {self.clip_low}; expected at most 1 (the ratio's "
                              "lower bound 1 - clip_low cannot go below 0).")
        for key in ("max_resample_rounds", "overlong_buffer"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{prefix}.{key}': got {getattr(self, key)}; expected >= 0.")
        check_range(self.overlong_penalty, f"{prefix}.overlong_penalty", low=0.0)
        check_range(self.temporal_bonus, f"{prefix}.temporal_bonus", low=0.0)
        check_range(self.temporal_ratio, f"{prefix}.temporal_ratio", low=0.0, low_open=True)
        if self.temporal_generations is not None and self.temporal_generations < 1:
            raise ConfigError(f"config key '{prefix}.temporal_generations': got {self.temporal_generations}; "
                              "expected >= 1 or null (num_generations // 2).")


def check_length(section: Any, prefix: str) -> None:
    """``epochs`` (finite, positive), ``max_steps``, ``rollout_batches`` and ``eval_every`` (positive) of a
    training section."""
    epochs = section.epochs
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ConfigError(f"config key '{prefix}.epochs': got {epochs}; expected a positive finite number of passes "
                          "over the stage's data (may be fractional) or null.")
    for key in ("max_steps", "rollout_batches", "eval_every", "save_every"):
        value = getattr(section, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"config key '{prefix}.{key}': got {value}; expected a positive whole number"
                              f"{'' if key == 'save_every' else ' or null'}.")


def check_range(value: float | None, key: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, note: str = "") -> None:
    """A finite number within [low, high] (``low_open``: above ``low``); None passes (an optional key)."""
    if value is None:
        return
    bad = not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and value > high)
    if bad:
        bounds = f"{'(' if low_open else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"config key '{key}': got {value}; expected a finite number in {bounds}"
                          f"{' ' + note if note else ''}.")


BUILT_IN_JUDGES = ("rule", "hf", "openai")


def check_judge_name(name: str, key: str) -> None:
    """A built-in judge or an import path (checked by importing it when the run starts)."""
    if name not in BUILT_IN_JUDGES and ":" not in name:
        raise ConfigError(f"config key '{key}': got {name!r}; expected one of {', '.join(BUILT_IN_JUDGES)} or an "
                          "import path 'package.module:JudgeClass'.")


def check_micro_batch(size: int | None, prefix: str) -> None:
    if size is not None and size < 1:
        raise ConfigError(f"config key '{prefix}.micro_batch_size': got {size}; expected a positive number or null "
                          "(all at once).")


def check_grpo_batches(grpo: GRPOConfig, rollout: RolloutConfig, prefix: str) -> None:
    if grpo.overlong_buffer > rollout.max_new_tokens:
        raise ConfigError(f"config key '{prefix}.overlong_buffer': {grpo.overlong_buffer} tokens is longer than "
                          f"rollout.max_new_tokens {rollout.max_new_tokens}; expected a buffer before the cap.")
    responses = grpo.rollout_batch_size * rollout.num_generations
    if responses % grpo.global_batch_size:
        raise ConfigError(
            f"config key '{prefix}.global_batch_size': {grpo.global_batch_size} responses per optimizer step must "
            f"divide the {responses} responses of a rollout batch (rollout_batch_size {grpo.rollout_batch_size} x "
            f"num_generations {rollout.num_generations})."
        )


@dataclass(frozen=True)
class SFTConfig:
    lr: float = 1e-4
    batch_size: int = 8
    epochs: float | None = None  # passes over the samples (may be fractional); with neither this nor max_steps: 1
    max_steps: int | None = None  # optimizer steps (with epochs too: the shorter)
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    weight_decay: float = 0.0
    save_every: int = 10  # optimizer steps between checkpoints (the unit a killed run resumes from)
    save_every_s: float | None = None  # also checkpoint after the first step this many seconds past the last one
    eval_every: int | None = None  # optimizer steps between held-out evaluations (best checkpoint kept)

    def validate(self, prefix: str) -> None:
        check_length(self, prefix)


@dataclass(frozen=True)
class VerifierConfig:
    judge: str = "rule"  # rule | hf | openai, or a judge class by import path ("mypkg.judges:MyJudge")
    judge_url: str | None = None  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    judge_model: str | None = None
    api_key_env: str = "VERIPO_JUDGE_API_KEY"  # the key is read from this variable, never logged
    timeout_s: float = 30.0
    retries: int = 3
    concurrency: int = 8
    fallback_to_rule: bool = True
    prompt_template: str | None = None  # a file replacing the shipped judge prompt
    min_thinking_tokens: int = 0
    repetition_ngram: int = 4
    repetition_threshold: float = 0.5  # share of repeated n-grams above which a rollout counts as repetitive
    max_pairs_per_question: int = 2
    pair_types: tuple[str, ...] = ("consistency", "reflective", "penalty")  # tried in this order up to the cap
    construct_reflective: bool = False  # splice reflective chains when a group has none (veripo.verifier.pairs)
    reference_chosen: bool = False  # a group with no good rollout: its sample's reference chain is chosen
    # accuracy reward at which a rollout counts as correct; null: rewards.correct_threshold (GRPO's own)
    correct_threshold: float | None = None

    def validate(self, prefix: str) -> None:
        check_judge_name(self.judge, f"{prefix}.judge")
        check_range(self.correct_threshold, f"{prefix}.correct_threshold", low=0.0, high=1.0, low_open=True,
                    note="or null for rewards.correct_threshold")


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # paper Table 1
    lr: float = 5e-7  # paper Table 1
    global_batch_size: int = 32  # paper Table 1
    # pairs per forward/backward within a question (null: all of its pairs at once; one prompt pass either way)
    micro_batch_size: int | None = None
    # at most this many tokens per forward/backward within a question, as grpo.max_tokens_per_micro_batch (a
    # pair's chosen and rejected rows stay together); with micro_batch_size too, both limits hold
    max_tokens_per_micro_batch: int | None = None
    loss_type: str = "sigmoid"  # veripo.algos.dpo.DPO_LOSSES
    epochs: float | None = None  # passes over the pairs (may be fractional); with neither this nor max_steps: 1
    max_steps: int | None = None  # optimizer steps (with epochs too: the shorter)
    eval_every: int | None = None  # optimizer steps between held-out evaluations (best checkpoint kept)
    nll_coef: float = 0.0  # optional NLL term on the chosen response
    save_every: int = 1  # optimizer steps between checkpoints (the unit a killed run resumes from)
    save_every_s: float | None = None  # also checkpoint after the first step this many seconds past the last one
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"

    def validate(self, prefix: str) -> None:
        check_micro_batch(self.micro_batch_size, prefix)
        check_length(self, prefix)


@dataclass(frozen=True)
class DistributedConfig:
    """Settings that only matter with several data-parallel processes (torchrun / accelerate launch)."""

    # ZeRO stage 1 (torch's ZeroRedundancyOptimizer): each rank keeps the AdamW moments of its share of the
    # parameters, updates that share and broadcasts it; weights and gradients stay whole on every rank.
    # Optimizer memory falls by the number of ranks (AdamW's two fp32 moments: 8 bytes per parameter,
    # 56 GB for a 7B policy). One process: no effect.
    shard_optimizer: bool = False
    # FSDP2 (ZeRO stage 3 for the decoder layers): each rank keeps 1/world of every decoder layer's weights,
    # gradients and AdamW state, all-gathering a layer for its forward and backward (veripo.parallel.fsdp2).
    # The vision tower, embeddings and lm_head stay whole (data parallel); with shard_optimizer too, their AdamW
    # state is split over the ranks (ZeRO-1). Sampling and evaluation gather the layers for their duration.
    # One process: no effect. Also switched on by an accelerate FSDP2 launch (configs/accelerate/fsdp2-8gpu.yaml).
    shard_weights: bool = False
    # Hybrid sharding (HSDP) for several nodes: with shard_weights, the layers are sharded within each group of
    # this many consecutive ranks (set it to the GPUs per node) and the groups are replicas, so the per-layer
    # all-gathers stay inside a node and only gradients cross nodes. Must divide the number of processes.
    # null: one group of all ranks. Also set by an accelerate parallelism_config (dp_shard_size).
    shard_group_size: int | None = None
    # DeepSpeed ZeRO stage 3 instead: DeepSpeed's engine partitions every parameter (vision tower included),
    # gradient and AdamW moment over the ranks (veripo.parallel.deepspeed_zero3; needs `pip install deepspeed`).
    # Also switched on by an accelerate DeepSpeed launch (configs/accelerate/deepspeed-zero3-8gpu.yaml).
    # Excludes shard_weights and shard_optimizer. One process: no effect.
    deepspeed_zero3: bool = False
    # split each optimizer step's training work over the ranks by token count (veripo.parallel.balance: a
    # Karmarkar-Karp partition of the step's question groups, each rank's prompt and response tokens), instead of
    # question i to rank i % world; metrics.jsonl logs rank_imbalance (max / mean rank tokens) either way.
    # Sampling stays split by question. One process: no effect.
    balance_tokens: bool = True

    def validate(self, prefix: str) -> None:
        if self.deepspeed_zero3 and (self.shard_weights or self.shard_optimizer):
            raise ConfigError(f"config key '{prefix}.deepspeed_zero3' with shard_weights or shard_optimizer: ZeRO-3 "
                              "already partitions weights and optimizer state; set only one of them")


@dataclass(frozen=True)
class HardwareConfig:
    """The machines a config is meant for; ``veripo plan`` checks the per-rank memory against them (a run
    itself takes its ranks from the launcher)."""

    gpus: int = 1  # data-parallel ranks (all nodes together)
    gpu_memory_gib: float | None = None  # memory of one GPU; null: the plan gives no fits / does not fit verdict

    def validate(self, prefix: str) -> None:
        if self.gpus < 1:
            raise ConfigError(f"config key '{prefix}.gpus': got {self.gpus}; expected a positive number of GPUs.")
        mem = self.gpu_memory_gib
        if mem is not None and not (math.isfinite(mem) and mem > 0):
            raise ConfigError(f"config key '{prefix}.gpu_memory_gib': got {mem}; expected a positive number of GiB.")


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 256
    batch_size: int = 8
    repetition_penalty: float = 1.05  # VerIPO eval
    profile: str = "veripo-eval"
    prompt: Literal["veripo", "videor1"] = "veripo"
    heldout: tuple[DataSource, ...] = ()  # evaluated (greedy) after every training stage of a run
    judge: str = "rule"  # for the inconsistency rate in evaluations (as verifier.judge)
    # processes decoding the held-out sets of a one-process CPU run: this one plus workers - 1 spawned once, each
    # with a copy of the model, handed whole batches (veripo.eval.workers: the same predictions, one core each);
    # under torchrun every rank decodes a share instead
    workers: int = 1

    def validate(self, prefix: str) -> None:
        check_judge_name(self.judge, f"{prefix}.judge")
        if self.workers > 64:
            raise ConfigError(f"config key '{prefix}.workers': got {self.workers}; expected at most 64 processes.")


TrackerName = Literal["tensorboard", "wandb", "mlflow", "trackio"]


@dataclass(frozen=True)
class LoggingConfig:
    """Where the run's numbers go besides its own files (``metrics.jsonl``, ``summary.json``, the report, which
    always stay): experiment trackers, through their own libraries (veripo.report.trackers)."""

    # any subset: every stage's metric rows, the held-out evaluation results and the report plots go to each
    trackers: tuple[TrackerName, ...] = ()
    project: str = "veripo"  # the W&B project, MLflow experiment and trackio project; the run is named after its folder
    # offline (default): W&B offline mode, an MLflow file store, TensorBoard event files and trackio's local
    # database, all under <run dir>/trackers (trackio: $TRACKIO_DIR when set). online: W&B syncs as it logs,
    # MLflow logs to $MLFLOW_TRACKING_URI (a server), TensorBoard and trackio stay local.
    mode: Literal["offline", "online"] = "offline"

    def validate(self, prefix: str) -> None:
        repeated = sorted({t for t in self.trackers if self.trackers.count(t) > 1})
        if repeated:
            raise ConfigError(f"config key '{prefix}.trackers': {repeated} listed more than once.")
        if not self.project.strip():
            raise ConfigError(f"config key '{prefix}.project': empty; expected a project name.")


@dataclass(frozen=True)
class Stage:
    """One step of the curriculum. ``kind`` picks the recipe; the section of that kind overrides the base."""

    name: str
    kind: Literal["sft", "grpo", "verify", "dpo"]
    data: tuple[DataSource, ...] = ()
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    verifier: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    name: str = "veripo"
    seed: int = 0
    output_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: tuple[DataSource, ...] = ()
    stages: tuple[Stage, ...] = ()  # run once, in order (e.g. sft -> grpo -> grpo -> verify -> dpo)
    loop: tuple[Stage, ...] = ()  # then repeated `iterations` times (e.g. video grpo -> verify -> dpo)
    iterations: int = 1
    discard_easy_prob: float = 0.8  # paper: drop 80% of questions whose rollouts were all correct
    # a training stage skips (logs and counts) questions it cannot use (unreadable media, a prompt over
    # model.max_prompt_tokens) and refuses to train when more than this share of its questions are such
    max_bad_share: float = 0.05

    def validate(self, prefix: str) -> None:
        named = [(f"stages[{i}]", s) for i, s in enumerate(self.stages)] + [(f"loop[{i}]", s) for i, s in enumerate(self.loop)]
        for where, stage in named:
            for section in ("sft", "grpo", "dpo", "rollout", "verifier"):
                self.section_for(stage, section, prefix=f"{where}.{section}")
            if stage.kind == "grpo":
                check_grpo_batches(self.section_for(stage, "grpo"), self.section_for(stage, "rollout"), f"{where}.grpo")
                sharded = self.distributed.shard_weights or self.distributed.deepspeed_zero3
                if sharded and self.section_for(stage, "rollout").engine == "vllm":
                    raise ConfigError(f"config key '{where}.rollout.engine': vllm with weight sharding is not "
                                      "supported yet (every rank's vLLM needs whole weights pushed); use engine hf "
                                      "or data parallel without weight sharding.")
                if sharded and self.section_for(stage, "grpo").kl_coef > 0:
                    raise ConfigError(f"config key '{where}.grpo.kl_coef' > 0 with weight sharding: the "
                                      "frozen reference would be a whole copy of the policy on every rank; use "
                                      "kl_coef 0 (VerIPO's setting) or run without weight sharding.")
        check_grpo_batches(self.grpo, self.rollout, "grpo")
        if not self.eval.heldout:  # eval_every evaluates on eval.heldout: without it there is nothing to do
            sections = [(kind, getattr(self, kind)) for kind in ("sft", "grpo", "dpo")]
            sections += [(f"{where}.{stage.kind}", self.section_for(stage, stage.kind)) for where, stage in named
                         if stage.kind in ("sft", "grpo", "dpo")]
            for key, section in sections:
                if section.eval_every is not None:
                    raise ConfigError(f"config key '{key}.eval_every': {section.eval_every} with no eval.heldout to "
                                      "evaluate on; add eval.heldout or remove eval_every")

        if self.lora.enabled and (self.distributed.shard_weights or self.distributed.deepspeed_zero3):
            raise ConfigError("config key 'lora.enabled' with weight sharding (distributed.shard_weights or "
                              "deepspeed_zero3): adapters are not wired into the sharded strategies; train LoRA on "
                              "one process or data parallel.")

    def warnings(self) -> list[str]:
        """Settings that are valid but rarely what is meant (printed when a run starts)."""
        out = []
        named = [("", None)] + [(f"stages[{i}].", s) for i, s in enumerate(self.stages)] + \
                [(f"loop[{i}].", s) for i, s in enumerate(self.loop)]
        for where, stage in named:
            if stage is not None and stage.kind != "grpo":
                continue
            rollout = self.rollout if stage is None else self.section_for(stage, "rollout")
            if rollout.num_generations == 1 and (stage is not None or not self.stages and not self.loop):
                out.append(f"config key '{where}rollout.num_generations' is 1: every GRPO group has one response, "
                           "so every advantage is 0 and GRPO does not learn (the paper uses 8)")
        return out

    def section_for(self, stage: Stage, section: str, prefix: str | None = None) -> Any:
        """The base ``section`` (e.g. ``grpo``) with ``stage``'s overrides applied, validated."""
        from veripo.config.core import build, to_dict

        merged = {**to_dict(getattr(self, section)), **getattr(stage, section)}
        return build(type(getattr(self, section)), merged, prefix=prefix or f"stages.{stage.name}.{section}")
