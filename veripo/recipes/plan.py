"""A dry run of a config (``veripo plan``): per stage the questions, rollouts, optimizer steps, text and visual
tokens and the per-rank peak memory of the chosen parallel strategy, without loading a model or any media.

- The architecture: ``--model-config FILE``, else ``model.path``'s ``config.json`` when it is there, else the
  published dimensions of the checkpoint the path names (``veripo.models.published_configs``), else the tiny
  model ``model.build_tiny`` names; the model is built on the meta device, so parameter counts are exact.
- Questions: counted from the stage's data files when they are there, else the ``size:`` each data entry
  declares (a synthetic source: its ``n``); the table says which. A source's kind of media is read from its file
  (``data_type``) or, for a file that is absent, from its name (``video``/``image`` in it; else text).
- Stage lengths come from ``veripo.recipes.sizing``, the same code the recipes run.
- Memory: ``veripo.models.footprint`` (states by strategy, activations of the largest micro-batch with and
  without gradient checkpointing, the rollout engine's KV cache).

Assumptions the data cannot answer are parameters (``PlanAssumptions``) and are printed with the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.config import DataSource, RunConfig, Stage
from veripo.models.footprint import (
    DTYPE_BYTES,
    Activations,
    ModelDims,
    StateBytes,
    VisualCost,
    activation_bytes,
    image_cost,
    read_model_config,
    state_bytes,
    video_cost,
)
from veripo.models.micro_batches import plan_micro_batches
from veripo.recipes.sizing import StageSize, batch_size_of, grpo_size

GIB = 2**30


@dataclass(frozen=True)
class PlanAssumptions:
    """What the plan assumes where neither config nor data says."""

    prompt_text_tokens: int = 256  # template + question text per prompt
    video_seconds: float = 120.0  # source video length (frames: fps x seconds, clamped to media.max_frames)
    frame_width: int = 1280  # source resolution of videos and images before the resize
    frame_height: int = 720


@dataclass
class SourceCount:
    name: str
    questions: int | None
    how: str  # "file", "size:", "synthetic n", "unknown"
    kinds: dict[str, int]  # data_type -> questions (from the file) or {kind: questions} guessed from the name
    kinds_from: str  # "file" or "name"


@dataclass
class StagePlan:
    name: str
    kind: str
    sources: list[SourceCount] = field(default_factory=list)
    questions: int | None = None
    size: StageSize | None = None
    rollouts: int = 0
    text_tokens: int = 0
    visual_tokens: int = 0
    visual: VisualCost | None = None  # the largest visual input of a question
    prompt_tokens: int = 0  # the largest prompt (text + visual)
    rows: int = 0  # responses per forward/backward
    response_tokens: int = 0
    activations: Activations | None = None
    kv_cache: int = 0  # rollout engine's KV cache (GRPO)
    warning: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class RunPlan:
    model: str  # where the architecture came from
    dims: ModelDims
    dtype: str
    master_dtype: str
    strategy: str
    world: int
    gpu_memory_gib: float | None
    checkpointing: bool
    states: StateBytes
    stages: list[StagePlan]
    assumptions: PlanAssumptions

    def peak(self, stage: StagePlan, checkpointing: bool | None = None) -> int:
        """Per-rank peak bytes of a stage: training (states + activations) or sampling (weights gathered,
        masters, optimizer moments and the KV cache), whichever is larger."""
        if stage.activations is None:
            return self.states.weights
        gc = self.checkpointing if checkpointing is None else checkpointing
        train = self.states.total + (stage.activations.checkpointed if gc else stage.activations.full)
        gathered = DTYPE_BYTES[self.dtype] * self.dims.parameters
        sampling = gathered + self.states.masters + self.states.optimizer + stage.kv_cache
        return max(train, sampling)

    def fits(self, stage: StagePlan) -> bool | None:
        if self.gpu_memory_gib is None:
            return None
        return self.peak(stage) <= self.gpu_memory_gib * GIB


def resolve_model(cfg: RunConfig, model_config: str | Path | None) -> tuple[dict[str, Any], str]:
    """The ``config.json`` dict of the run's model and where it came from (see the module docstring)."""
    from veripo.models.published_configs import published_config, recognise

    if model_config is not None:
        return read_model_config(model_config), f"--model-config {model_config}"
    path = cfg.model.path
    if path is not None and (Path(path) / "config.json").exists():
        return read_model_config(path), f"{path}/config.json"
    if path is not None:
        name = recognise(path)
        if name is None:
            raise ValueError(f"model.path {path!r} is not on this machine and its last component names no "
                             "checkpoint veripo knows the dimensions of; give --model-config CONFIG_JSON")
        return published_config(name), f"published dimensions of {name} (model.path is not here)"
    if cfg.model.build_tiny is not None:
        return tiny_model_config(cfg.model.build_tiny), f"the built-in '{cfg.model.build_tiny}' model"
    raise ValueError("config: no model.path and no model.build_tiny; give --model-config CONFIG_JSON")


def tiny_model_config(size: str) -> dict[str, Any]:
    """The ``config.json`` dict of ``veripo.models.tiny``'s model ``size`` (token ids as its tokenizer's)."""
    from veripo.models.tiny import SIZES, tiny_config
    from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS

    spec = SIZES[size]

    class _Ids:  # the tokenizer's special ids follow its byte and merge tokens
        def __len__(self) -> int:
            return spec.vocab_size

        def convert_tokens_to_ids(self, token: str) -> int:
            return spec.vocab_size - len(QWEN_SPECIAL_TOKENS) + QWEN_SPECIAL_TOKENS.index(token)

    return tiny_config(spec, _Ids()).to_dict()


def strategy_of(cfg: RunConfig, world: int) -> str:
    dist = cfg.distributed
    if world == 1:
        return "single"
    if dist.deepspeed_zero3:
        return "zero3"
    if dist.shard_weights:
        return "fsdp2"
    return "zero1" if dist.shard_optimizer else "ddp"


def _kind_from_name(source: DataSource) -> str:
    words = f"{source.name or ''} {Path(source.path).name}".lower()
    return "video" if "video" in words else "image" if re.search(r"image|img|photo", words) else "text"


def count_source(source: DataSource, base: Path | None = None) -> SourceCount:
    """Questions of one data source and their kinds of media: from the file when it is there, else declared."""
    from veripo.data.loaders import load_samples

    name = source.name or Path(source.path).stem
    path = Path(source.path)
    if base is not None and not path.is_absolute():
        path = base / path
    if path.exists():
        result = load_samples(path, media_root=source.media_root, format=source.format, on_error="skip",
                              limit=source.limit, require_media=False)
        kinds: dict[str, int] = {}
        for sample in result.samples:
            kind = "video" if sample.video else "image" if sample.images else "text"
            kinds[kind] = kinds.get(kind, 0) + 1
        return SourceCount(name, len(result.samples), "file", kinds, "file")
    kind = _kind_from_name(source)
    if source.size is not None:
        n = min(source.size, source.limit or source.size)
        return SourceCount(name, n, "size:", {kind: n}, "name")
    if source.synthetic and "n" in source.synthetic:
        n = int(source.synthetic["n"])
        kinds_listed = source.synthetic.get("kinds") or ["video"]
        return SourceCount(name, n, "synthetic n", {k: n // len(kinds_listed) for k in kinds_listed}, "config")
    return SourceCount(name, None, "unknown", {kind: 0}, "name")


def plan_run(cfg: RunConfig, *, model_config: str | Path | None = None, gpus: int | None = None,
             gpu_memory_gib: float | None = None, assumptions: PlanAssumptions = PlanAssumptions(),
             data_base: Path | None = None) -> RunPlan:
    """The plan of every stage of ``cfg`` (``gpus`` / ``gpu_memory_gib`` override the ``hardware`` section)."""
    from veripo.recipes.veripo import plan as stage_order

    model, origin = resolve_model(cfg, model_config)
    dims = ModelDims.of(model)
    world = gpus or cfg.hardware.gpus
    memory = gpu_memory_gib if gpu_memory_gib is not None else cfg.hardware.gpu_memory_gib
    dtype = cfg.model.dtype
    master_dtype = getattr(cfg.model, "master_dtype", "float32")  # the mixed-precision key (issue 22, item 1)
    strategy = strategy_of(cfg, world)
    states = state_bytes(dims, dtype=dtype, master_dtype=master_dtype, world=world, strategy=strategy,
                         shard_group=cfg.distributed.shard_group_size, shard_optimizer=cfg.distributed.shard_optimizer)
    run = RunPlan(origin, dims, dtype, master_dtype, strategy, world, memory, cfg.model.gradient_checkpointing,
                  states, [], assumptions)
    last_grpo_groups: int | None = None
    for stage in stage_order(cfg):
        plan = plan_stage(cfg, stage, dims, assumptions, data_base, last_grpo_groups)
        if stage.kind == "grpo":
            # the verifier pairs within each rollout group the stage kept: one per question drawn into a rollout
            # batch (a question drawn on two passes is two groups), so the questions in its data undercount them
            last_grpo_groups = plan.size.drawn if plan.size else None
        run.stages.append(plan)
    return run


def _visual_costs(cfg: RunConfig, dims: ModelDims, a: PlanAssumptions) -> dict[str, VisualCost | None]:
    from veripo.data.media import count_sampled_frames

    media = cfg.media
    frames = count_sampled_frames(a.video_seconds, 10**9, fps=media.fps, min_frames=media.min_frames,
                                  max_frames=media.max_frames)
    return {"video": video_cost(dims, frames=frames, height=a.frame_height, width=a.frame_width,
                                min_pixels=media.min_pixels, max_pixels=media.max_pixels),
            "image": image_cost(dims, height=a.frame_height, width=a.frame_width, min_pixels=media.min_pixels,
                                max_pixels=media.max_pixels),
            "text": None}


def plan_stage(cfg: RunConfig, stage: Stage, dims: ModelDims, a: PlanAssumptions, data_base: Path | None,
               last_grpo_groups: int | None) -> StagePlan:
    plan = StagePlan(stage.name, stage.kind)
    costs = _visual_costs(cfg, dims, a)
    if stage.kind in ("sft", "grpo"):
        plan.sources = [count_source(s, data_base) for s in (stage.data or cfg.data)]
        known = [s.questions for s in plan.sources]
        plan.questions = None if None in known else sum(known)  # type: ignore[arg-type]
        unknown = [s.name for s in plan.sources if s.questions is None]
        if unknown:
            plan.notes.append(f"no file and no size: for {', '.join(unknown)}; declare `size:` to plan this stage")
    kinds: dict[str, int] = {}
    for s in plan.sources:
        for k, n in s.kinds.items():
            kinds[k] = kinds.get(k, 0) + n
    present = [k for k in ("video", "image", "text") if k in kinds] or ["text"]
    largest = next((costs[k] for k in present if costs[k] is not None), None)
    plan.visual = largest
    plan.prompt_tokens = a.prompt_text_tokens + (largest.tokens if largest else 0)
    visual_per_question = (sum(n * (costs[k].tokens if costs[k] else 0) for k, n in kinds.items()) /
                           max(1, sum(kinds.values())))
    rollout = cfg.section_for(stage, "rollout")
    if stage.kind == "grpo" and plan.questions:
        grpo = cfg.section_for(stage, "grpo")
        plan.size = grpo_size(grpo, rollout.num_generations, plan.questions)
        plan.rollouts = plan.size.drawn * rollout.num_generations
        plan.text_tokens = plan.size.drawn * a.prompt_text_tokens + plan.rollouts * rollout.max_new_tokens
        plan.visual_tokens = round(plan.size.drawn * visual_per_question)
        plan.rows = widest_micro_batch(plan.prompt_tokens, rollout.max_new_tokens, rollout.num_generations,
                                       grpo.micro_batch_size, grpo.max_tokens_per_micro_batch, grpo.shared_prefix)
        plan.response_tokens = rollout.max_new_tokens
        b = DTYPE_BYTES[cfg.model.dtype]
        # the engine prefills a question once and samples its G responses against copies of that cache
        plan.kv_cache = (dims.layers * 2 * dims.kv_width * b * rollout.num_generations *
                         (plan.prompt_tokens + rollout.max_new_tokens) * rollout.batch_questions)
        plan.warning = plan.size.warning(stage.name)
    elif stage.kind == "sft" and plan.questions:
        sft = cfg.section_for(stage, "sft")
        plan.size = batch_size_of(plan.questions, sft.batch_size, sft.epochs, sft.max_steps)
        plan.text_tokens = plan.size.drawn * (a.prompt_text_tokens + rollout.max_new_tokens)
        plan.visual_tokens = round(plan.size.drawn * visual_per_question)
        plan.rows, plan.response_tokens = 1, rollout.max_new_tokens
        plan.warning = plan.size.warning(stage.name)
    elif stage.kind == "dpo":
        dpo = cfg.section_for(stage, "dpo")
        verifier = cfg.section_for(stage, "verifier")
        if last_grpo_groups:
            pairs = verifier.max_pairs_per_question * last_grpo_groups
            plan.size = batch_size_of(pairs, dpo.global_batch_size, dpo.epochs, dpo.max_steps)
            plan.notes.append(f"pairs: at most {pairs} (max_pairs_per_question {verifier.max_pairs_per_question} x "
                              f"the {last_grpo_groups} rollout groups of the GRPO stage before); the verifier decides")
        plan.response_tokens = rollout.max_new_tokens
        plan.visual = largest = costs["video"]
        plan.prompt_tokens = a.prompt_text_tokens + largest.tokens
        plan.rows = widest_micro_batch(plan.prompt_tokens, rollout.max_new_tokens, 2 * verifier.max_pairs_per_question,
                                       dpo.micro_batch_size, dpo.max_tokens_per_micro_batch, True, unit=2)
        plan.notes.append("DPO prompts assumed to be videos (the pairs come from video-QA rollouts)")
    if stage.kind in ("sft", "grpo", "dpo"):
        plan.activations = activation_bytes(dims, prompt_tokens=plan.prompt_tokens,
                                            patches=plan.visual.patches if plan.visual else 0, rows=plan.rows,
                                            response_tokens=plan.response_tokens, dtype=cfg.model.dtype)
    return plan


def widest_micro_batch(prompt_tokens: int, response_tokens: int, rows: int, size: int | None,
                       max_tokens: int | None, shared_prefix: bool, unit: int = 1) -> int:
    """Rows of the largest micro-batch the recipes would run for the largest prompt and ``rows`` responses of
    ``response_tokens`` each (``plan_micro_batches``: the count and the token budget, whichever is stricter)."""
    plan = plan_micro_batches(prompt_tokens, [response_tokens] * rows, size=size, max_tokens=max_tokens,
                              shared_prefix=shared_prefix, unit=unit)
    return max(len(chunk) for chunk in plan.chunks)


def gib(n: int | float) -> str:
    """Bytes as GiB: one decimal from 10 GiB, two below (a tiny model's figures are not all 0.0)."""
    value = n / GIB
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
