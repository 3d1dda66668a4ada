"""The VerIPO loop (the paper's Figure 2): GRPO explores -> the Rollout-Aware Verifier builds pairs ->
DPO aligns -> GRPO again on the remaining (harder) questions, on a curriculum.

    run(cfg):
        policy = load the model (or build the tiny one)
        for stage in cfg.stages, then cfg.loop x cfg.iterations:
            sft    : warm start on reference chains of thought            (optional)
            grpo   : rollouts + rule rewards + clipped policy gradient     -> rollouts.jsonl
                     (questions all rollouts got right earlier are dropped with p = discard_easy_prob)
            verify : judge every rollout of the last GRPO stage            -> pairs.jsonl
            dpo    : align on those pairs
            eval   : held-out accuracy, length, inconsistency after every training stage
        report

Every stage writes its own folder in the run directory (docs/run-directory.md); ``state.json`` records
finished stages, so ``run(cfg, resume=RUN_DIR)`` continues after a kill at any point: finished stages are
skipped, the current one resumes from its newest checkpoint, nothing is written twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from veripo.config import RunConfig, Stage, dump_yaml
from veripo.data.curriculum import discard_easy
from veripo.data.jsonl import read_jsonl
from veripo.data.records import Sample
from veripo.parallel import DistInfo, ParallelStrategy, barrier, broadcast_object, init_distributed, make_strategy
from veripo.recipes.checkpoint import latest_checkpoint, load_model_weights
from veripo.recipes.common import Stopwatch, pick_device
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.dpo import run_dpo
from veripo.recipes.evaluation import evaluate_stage
from veripo.recipes.grpo import run_grpo
from veripo.recipes.run_dir import RunDir, atomic_write_text
from veripo.recipes.sft import run_sft
from veripo.recipes.sources import SampleStore
from veripo.recipes.verify import run_verify
from veripo.report.trackers import Trackers, check_available

PHASES: dict[str, Callable[[StageContext], StageResult]] = {
    "sft": run_sft,
    "grpo": run_grpo,
    "verify": run_verify,
    "dpo": run_dpo,
}
TRAINING = {"sft", "grpo", "dpo"}


def plan(cfg: RunConfig) -> list[Stage]:
    """The stages in run order: ``stages`` once, then ``loop`` x ``iterations`` (names get ``-it<k>``)."""
    planned = list(cfg.stages)
    for it in range(1, cfg.iterations + 1):
        planned += [dataclasses.replace(s, name=f"{s.name}-it{it}") for s in cfg.loop]
    return planned


def open_run(cfg: RunConfig, resume: str | Path | None, dist: DistInfo) -> RunDir:
    if resume is not None:
        run = RunDir(Path(resume).resolve())
        if not run.config_path.exists():
            raise FileNotFoundError(f"{run.root}: not a veripo run directory (no config.yaml)")
        return run
    if dist.is_main:
        run = RunDir.create(cfg.output_dir, cfg.name)
        atomic_write_text(run.config_path, dump_yaml(cfg))
    else:
        run = None
    if dist.world > 1:  # rank 0 created it
        run = RunDir(Path(broadcast_object(dist, str(run.root) if run else None)))
    return run


def load_base_policy(cfg: RunConfig, run: RunDir, parallel: ParallelStrategy) -> Any:
    """The policy the run starts from, handed to the parallel strategy (which may shard or wrap it)."""
    from veripo.models import build_tiny, load_policy

    dist = parallel.info
    path = cfg.model.path
    if path is None:
        if cfg.model.build_tiny is None:
            raise ValueError("config: set model.path to a local Qwen2.5-VL directory, or model.build_tiny to tiny|small")
        path = run.root / "base-model"
        if dist.is_main and not (path / "config.json").exists():
            build_tiny(path, size=cfg.model.build_tiny, seed=cfg.seed)
        barrier(dist)
    policy = load_policy(path, dtype=cfg.model.dtype, device=str(pick_device(cfg.model.device)),
                         attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    note = parallel.prepare(policy.model)
    if note and dist.is_main:
        Console(stderr=True).print(note)
    return policy


def stage_samples(store: SampleStore, cfg: RunConfig, stage: Stage, question_stats: dict[str, tuple[int, int]], index: int) -> list[Sample]:
    """The questions of a stage: its own data (or the run's), minus easy questions already mastered."""
    samples = store.load_all(stage.data or cfg.data)
    if stage.kind == "grpo" and question_stats and cfg.discard_easy_prob > 0:
        kept, dropped = discard_easy(samples, question_stats, prob=cfg.discard_easy_prob, seed=cfg.seed + index)
        if dropped:
            store.console.print(f"[dim]\\[{stage.name}][/dim] easy-sample discard: dropped {len(dropped)} of "
                                f"{len(samples)} questions answered correctly by every rollout before")
        samples = kept
    return samples


def run(cfg: RunConfig | None, *, resume: str | Path | None = None, show_progress: bool = True,
        inputs: dict[str, Path] | None = None) -> RunDir:
    """Run (or resume) the whole VerIPO loop; returns the run directory.

    ``inputs`` seeds the files later stages read (``{"pairs": PATH}`` for a DPO-only run); they are kept in
    ``state.json`` so a resumed run sees them too.
    """
    dist = init_distributed()
    console = Console(stderr=True)
    if cfg is not None:  # a setting that cannot work fails before anything is written
        check_algorithm_names(cfg)
        check_available(cfg.logging.trackers, cfg.logging.mode == "online")  # one line naming the extra
        check_engines_installed(cfg)
        make_strategy(cfg.distributed, os.environ, dist)
    run_dir = open_run(cfg, resume, dist)
    if resume is not None:
        from veripo.config import load

        cfg = load(RunConfig, run_dir.config_path)  # the run's own config, not the caller's
        check_algorithm_names(cfg)
        check_available(cfg.logging.trackers, cfg.logging.mode == "online")  # one line naming the extra
        check_engines_installed(cfg)
    parallel = make_strategy(cfg.distributed, os.environ, dist)
    state = run_dir.read_state()
    if inputs:
        state["inputs"] = {k: str(Path(v).resolve()) for k, v in inputs.items()}
    policy = load_base_policy(cfg, run_dir, parallel)
    trackers = open_trackers(cfg, run_dir) if dist.is_main else Trackers()
    try:
        run_stages(cfg, run_dir, parallel, policy, state, console, show_progress, trackers)
    finally:
        trackers.close()
    return run_dir


def run_stages(cfg: RunConfig, run_dir: RunDir, parallel: ParallelStrategy, policy: Any, state: dict[str, Any],
               console: Console, show_progress: bool, trackers: Trackers) -> None:
    """Every stage in order (finished ones skipped), held-out evaluation after training stages, the report."""
    dist = parallel.info
    done = {entry["index"]: entry for entry in state.get("completed", [])}
    store = SampleStore(cfg, run_dir, console)
    if dist.is_main:  # synthetic data first, by one rank
        for source in (*cfg.data, *cfg.eval.heldout, *(d for s in (*cfg.stages, *cfg.loop) for d in s.data)):
            store.generate(source)
    barrier(dist)
    encode = store.encoder(policy)
    inputs = {k: Path(v) for k, v in state.get("inputs", {}).items()}
    question_stats: dict[str, tuple[int, int]] = {}
    global_step = 0
    last_training_dir: Path | None = None
    stages = plan(cfg)
    if dist.is_main:
        console.print(f"[bold]veripo run[/bold] {run_dir.root}  ({len(stages)} stages)")
    for index, stage in enumerate(stages):
        stage_dir = run_dir.stage_dir(index, stage.name)
        if index in done:
            entry = done[index]
            inputs.update({k: run_dir.path_of(v) for k, v in entry.get("outputs", {}).items()})
            global_step = entry.get("global_step", global_step)
            if stage.kind in TRAINING and entry.get("steps", 0) > 0:
                last_training_dir = stage_dir
            if stage.kind == "grpo":
                question_stats.update(read_question_stats(stage_dir))
            continue
        if last_training_dir is not None and latest_checkpoint(stage_dir) is None:
            # resuming after finished stages: start from the newest finished weights
            load_model_weights(policy.model, latest_checkpoint(last_training_dir), parallel)
            last_training_dir = None
        if stage.kind in ("verify", "dpo"):
            # the questions of every rollout so far, also those of stages finished before a resume (loaded once)
            for source in (d for earlier in stages[: index + 1] for d in (earlier.data or cfg.data)):
                store.load(source)
            samples = store.all_samples()
        else:
            samples = stage_samples(store, cfg, stage, question_stats, index)
        ctx = StageContext(cfg=cfg, stage=stage, index=index, stage_dir=stage_dir, policy=policy, samples=samples,
                           encode=encode, parallel=parallel, global_step=global_step, console=console,
                           show_progress=show_progress, inputs=dict(inputs), trackers=trackers)
        state["current"] = {"index": index, "name": stage.name, "kind": stage.kind}
        if dist.is_main:
            run_dir.write_state(state)
        clock = Stopwatch()
        result = PHASES[stage.kind](ctx)
        wall = result.numbers.get("wall_time_s", clock.elapsed())
        global_step += result.steps
        if stage.kind == "grpo":
            inputs["rollouts"] = stage_dir / "rollouts.jsonl"
            question_stats.update(read_question_stats(stage_dir))
        inputs.update({k: v for k, v in result.outputs.items() if k in ("pairs", "verdicts")})
        entry: dict[str, Any] = {"index": index, "name": stage.name, "kind": stage.kind, "steps": result.steps,
                                 "global_step": global_step, "wall_time_s": wall,
                                 "outputs": {k: run_dir.name_of(v) for k, v in inputs.items()}}
        summary = {"index": index, "name": stage.name, "kind": stage.kind, "wall_time_s": wall,
                   "steps": result.steps, **{k: v for k, v in result.numbers.items() if k != "wall_time_s"}}
        if stage.kind in TRAINING and cfg.eval.heldout:
            summary["eval"] = evaluate_stage(ctx, store)
        trackers.log_metrics({f"summary/{stage.name}": {k: v for k, v in summary.items() if k not in ("index", "eval")},
                              "eval": summary.get("eval", {})}, step=global_step)
        if dist.is_main:
            run_dir.update_summary(summary)
            state.setdefault("completed", []).append(entry)
            state["current"] = None
            run_dir.write_state(state)
        barrier(dist)
    if dist.is_main:
        from veripo.report import write_report

        report = write_report(run_dir.root)
        trackers.log_images({f"report/{png.stem}": png for png in sorted(report.parent.glob("*.png"))}, global_step)
        console.print(f"[bold green]done[/bold green]: report at {report}")


def open_trackers(cfg: RunConfig, run_dir: RunDir) -> Trackers:
    """The run's experiment trackers (rank 0), opened under ``<run dir>/trackers`` with the run's config."""
    from veripo.config import to_dict

    return Trackers.open(cfg.logging.trackers, run_dir.root, to_dict(cfg), project=cfg.logging.project,
                         online=cfg.logging.mode == "online")


def check_engines_installed(cfg: RunConfig) -> None:
    """The package of every rollout engine a GRPO stage uses is installed (one line naming the extra otherwise)."""
    from veripo.rollout.registry import check_engine_installed

    for stage in plan(cfg):
        if stage.kind == "grpo":
            check_engine_installed(cfg.section_for(stage, "rollout").engine)


def check_algorithm_names(cfg: RunConfig) -> None:
    """Every algorithm a stage names (advantage estimator, policy loss and its aggregation, KL estimator, DPO
    loss) is registered in ``veripo.algos``; a ``ConfigError`` names the key and the choices otherwise."""
    from veripo.algos.advantages import ADVANTAGES
    from veripo.algos.dpo import DPO_LOSSES
    from veripo.algos.kl import KL_ESTIMATORS
    from veripo.algos.policy_loss import LOSS_AGGREGATIONS, POLICY_LOSSES
    from veripo.config import ConfigError

    choices = {("grpo", "advantage"): ADVANTAGES, ("grpo", "policy_loss"): POLICY_LOSSES,
               ("grpo", "loss_agg"): LOSS_AGGREGATIONS, ("grpo", "kl_estimator"): KL_ESTIMATORS,
               ("dpo", "loss_type"): DPO_LOSSES}
    named = [("", None)] + [(f"stages[{i}].", s) for i, s in enumerate(cfg.stages)] + \
            [(f"loop[{i}].", s) for i, s in enumerate(cfg.loop)]
    for where, stage in named:
        for (section, key), registry in choices.items():
            value = getattr(getattr(cfg, section) if stage is None else cfg.section_for(stage, section), key)
            if value not in registry:
                close = difflib.get_close_matches(str(value), registry.names(), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"config key '{where}{section}.{key}': {value!r} is not a registered "
                                  f"{registry.kind}; expected one of {registry.names()}.{hint}")


def read_question_stats(stage_dir: Path) -> dict[str, tuple[int, int]]:
    """Latest (correct, total) rollouts per question in a GRPO stage's ``question_stats.jsonl``."""
    path = stage_dir / "question_stats.jsonl"
    if not path.exists():
        return {}
    return {row["sample_id"]: (int(row["correct"]), int(row["n"])) for row in read_jsonl(path)}
