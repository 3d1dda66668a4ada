"""The config schema: one frozen dataclass per section. Defaults are the project's documented defaults.

Where the VerIPO paper publishes a value (Table 1) the default follows it; where it does not (KL, clip,
frames) the default follows the paper's framework lineage and the comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from veripo.config.core import ConfigError

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # a local Qwen2.5-VL / Qwen2-VL directory (from_pretrained)
    build_tiny: Literal["tiny", "small"] | None = None  # build a random tiny model when path is missing
    dtype: Dtype = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None
    prompt: Literal["veripo", "videor1"] = "veripo"  # the training prompt template (veripo.models.prompts)


@dataclass(frozen=True)
class MediaConfig:
    fps: float = 2.0
    max_frames: int = 16
    min_frames: int = 2
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 256 * 28 * 28  # VerIPO eval default per frame
    cache_dir: str | None = None  # decoded-frame cache; None = <run dir>/../.veripo-cache

    def validate(self, prefix: str) -> None:
        if self.fps <= 0:
            raise ConfigError(f"config key '{prefix}.fps': got {self.fps}; expected a positive number of frames per second.")
        if self.max_frames < self.min_frames or self.min_frames < 1:
            raise ConfigError(f"config key '{prefix}.max_frames': need 1 <= min_frames <= max_frames, got {self.min_frames}..{self.max_frames}.")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"config key '{prefix}.min_pixels': {self.min_pixels} is above max_pixels {self.max_pixels}.")


@dataclass(frozen=True)
class DataSource:
    path: str  # a Video-R1 / VerIPO JSON, a JSONL file or a synthetic dataset folder
    name: str | None = None
    media_root: str | None = None  # media paths resolve under this folder; None = the file's folder
    format: Literal["auto", "videor1", "videor1-eval", "veripo-eval", "jsonl"] = "auto"
    on_error: Literal["skip", "fail"] = "skip"
    weight: float = 1.0
    limit: int | None = None
    # generate a synthetic dataset folder at `path` (relative: under the run directory) when it is missing;
    # keys are veripo.data.synthetic.make_synthetic arguments: n, seed, kinds, size, frames, difficulties, tasks,
    # chain
    synthetic: dict[str, Any] = field(default_factory=dict)


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
        if self.num_generations < 1:
            raise ConfigError(f"config key '{prefix}.num_generations': got {self.num_generations}; expected >= 1.")
        if self.temperature < 0:
            raise ConfigError(f"config key '{prefix}.temperature': got {self.temperature}; expected >= 0.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"config key '{prefix}.top_p': got {self.top_p}; expected 0 < top_p <= 1.")


@dataclass(frozen=True)
class RewardConfig:
    profile: str = "veripo"  # a scoring profile from veripo.rewards (videor1-train, videor1-eval, veripo-eval, veripo)
    extra: tuple[str, ...] = ()  # extra reward functions by registry name, added to the profile's
    weights: dict[str, float] = field(default_factory=dict)  # per-reward weight overrides


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
    rollout_batches: int = 1  # rollout batches in this phase
    # algorithms by their registered names (veripo.algos registries; checked when a run starts)
    advantage: str = "grpo"  # grpo | drgrpo | rloo
    policy_loss: str = "clipped"  # veripo.algos.policy_loss.POLICY_LOSSES
    clip_low: float = 0.2  # lineage default (paper: not published)
    clip_high: float = 0.2
    dual_clip: float | None = None
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
    accuracy_band: tuple[float, float] | None = None  # keep groups whose mean accuracy lies in [lo, hi]
    save_every: int = 1  # rollout batches between checkpoints (the unit a killed run resumes from)
    # stop after the rollout batch that passes this many seconds (for equal-time comparisons; a run with a
    # time budget is not reproducible across machines or resumes)
    time_budget_s: float | None = None

    def validate(self, prefix: str) -> None:
        if self.lr <= 0:
            raise ConfigError(f"config key '{prefix}.lr': got {self.lr}; expected a positive learning rate.")
        check_micro_batch(self.micro_batch_size, prefix)


def check_micro_batch(size: int | None, prefix: str) -> None:
    if size is not None and size < 1:
        raise ConfigError(f"config key '{prefix}.micro_batch_size': got {size}; expected a positive number or null "
                          "(all at once).")


def check_grpo_batches(grpo: GRPOConfig, rollout: RolloutConfig, prefix: str) -> None:
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
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    weight_decay: float = 0.0
    save_every: int = 10  # optimizer steps between checkpoints (the unit a killed run resumes from)


@dataclass(frozen=True)
class VerifierConfig:
    judge: Literal["rule", "hf", "openai"] = "rule"
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
    correct_threshold: float = 1.0  # accuracy reward at which a rollout counts as correct


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # paper Table 1
    lr: float = 5e-7  # paper Table 1
    global_batch_size: int = 32  # paper Table 1
    # pairs per forward/backward within a question (null: all of its pairs at once; one prompt pass either way)
    micro_batch_size: int | None = None
    loss_type: str = "sigmoid"  # veripo.algos.dpo.DPO_LOSSES
    epochs: int = 1
    nll_coef: float = 0.0  # optional NLL term on the chosen response
    save_every: int = 1  # optimizer steps between checkpoints (the unit a killed run resumes from)
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"

    def validate(self, prefix: str) -> None:
        check_micro_batch(self.micro_batch_size, prefix)


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

    def validate(self, prefix: str) -> None:
        if self.shard_group_size is not None and self.shard_group_size < 1:
            raise ConfigError(f"config key '{prefix}.shard_group_size' must be a positive number of ranks, got "
                              f"{self.shard_group_size}")
        if self.deepspeed_zero3 and (self.shard_weights or self.shard_optimizer):
            raise ConfigError(f"config key '{prefix}.deepspeed_zero3' with shard_weights or shard_optimizer: ZeRO-3 "
                              "already partitions weights and optimizer state; set only one of them")


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 256
    batch_size: int = 8
    repetition_penalty: float = 1.05  # VerIPO eval
    profile: str = "veripo-eval"
    prompt: Literal["veripo", "videor1"] = "veripo"
    heldout: tuple[DataSource, ...] = ()  # evaluated (greedy) after every training stage of a run
    judge: Literal["rule", "hf", "openai"] = "rule"  # for the inconsistency rate in evaluations


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
    media: MediaConfig = field(default_factory=MediaConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: tuple[DataSource, ...] = ()
    stages: tuple[Stage, ...] = ()  # run once, in order (e.g. sft -> grpo -> grpo -> verify -> dpo)
    loop: tuple[Stage, ...] = ()  # then repeated `iterations` times (e.g. video grpo -> verify -> dpo)
    iterations: int = 1
    discard_easy_prob: float = 0.8  # paper: drop 80% of questions whose rollouts were all correct

    def validate(self, prefix: str) -> None:
        if not 0.0 <= self.discard_easy_prob <= 1.0:
            raise ConfigError(f"config key 'discard_easy_prob': got {self.discard_easy_prob}; expected 0..1.")
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

    def section_for(self, stage: Stage, section: str, prefix: str | None = None) -> Any:
        """The base ``section`` (e.g. ``grpo``) with ``stage``'s overrides applied, validated."""
        from veripo.config.core import build, to_dict

        merged = {**to_dict(getattr(self, section)), **getattr(stage, section)}
        return build(type(getattr(self, section)), merged, prefix=prefix or f"stages.{stage.name}.{section}")
