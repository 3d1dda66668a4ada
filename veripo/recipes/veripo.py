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
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from veripo.config import ConfigError, RunConfig, Stage, dump_yaml
from veripo.config.plugins import is_import_path
from veripo.data.curriculum import discard_easy
from veripo.data.jsonl import read_jsonl
from veripo.data.records import Sample
from veripo.parallel import (
    DistInfo,
    ParallelStrategy,
    Precision,
    barrier,
    broadcast_object,
    init_distributed,
    make_strategy,
)
from veripo.recipes.checkpoint import latest_checkpoint, load_model_weights
from veripo.recipes.common import Stopwatch, open_vision_cache, pick_device
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.dpo import run_dpo
from veripo.recipes.evaluation import check_eval_workers, evaluate_stage, start_eval_workers
from veripo.recipes.grpo import run_grpo
from veripo.errors import RunStateError
from veripo.recipes.run_dir import RunDir, atomic_write_text, config_drift, config_sha256
from veripo.rewards.profiles import profile_for
from veripo.rewards.registry import get_reward
from veripo.verifier.judges import load_judge
from veripo.recipes.sft import run_sft
from veripo.recipes.sources import SKIPPED_FILE, SampleStore, drop_unusable
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
    """The run directory: an existing one to resume, or a new one holding the config and a state that
    records the config's hash (rank 0 locks it against a second process)."""
    if resume is not None:
        run = RunDir.open_existing(resume)
        if dist.is_main:
            run.lock()
        return run
    if dist.is_main:
        run = RunDir.create(cfg.output_dir, cfg.name)
        run.lock()
        text = dump_yaml(cfg)
        try:
            atomic_write_text(run.config_path, text)
            run.write_state({"completed": [], "current": None, "config": {"sha256": config_sha256(text), "text": text}})
        except BaseException:
            run.unlock()
            raise
    else:
        run = None
    if dist.world > 1:  # rank 0 created it
        run = RunDir(Path(broadcast_object(dist, str(run.root) if run else None)))
    return run


def check_config_drift(run_dir: RunDir, state: dict[str, Any], allow_change: bool, console: Console,
                       is_main: bool) -> None:
    """Refuse to resume a run whose ``config.yaml`` was edited since it started (the two halves would train
    under different settings with no record of it), or with ``allow_change`` print the diff and record it
    in ``state['config_changes']``. A run from before the hash was kept gets its current config recorded."""
    text = run_dir.config_path.read_text(encoding="utf-8")
    diff = config_drift(state, text, run_dir.config_path)
    if diff is None:
        state.setdefault("config", {"sha256": config_sha256(text), "text": text})
        return
    if not allow_change:
        changed = changed_keys(state["config"].get("text", ""), text)
        raise RunStateError(f"{run_dir.config_path} was edited since the run started ({'; '.join(changed[:4]) or 'text changed'}"
                            f"{'; ...' if len(changed) > 4 else ''}); restore it, or resume with --allow-config-change "
                            "to continue under the edited file (the diff is recorded in state.json)")
    if is_main:
        console.print(f"[yellow]config changed since the run started[/yellow] (--allow-config-change):\n{diff}")
    state.setdefault("config_changes", []).append(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_sha256": state["config"].get("sha256"),
         "to_sha256": config_sha256(text), "completed_stages": len(state.get("completed", [])), "diff": diff})
    state["config"] = {"sha256": config_sha256(text), "text": text}


def check_resumable(run_dir: RunDir, stages: list[Stage], state: dict[str, Any]) -> None:
    """Before anything loads: the weights a resumed run continues from are there. The first unfinished stage
    starts from its own newest checkpoint, else from the last finished training stage's: RunStateError when
    neither exists (the checkpoints of finished stages were deleted)."""
    done = {entry["index"]: entry for entry in state.get("completed", [])}
    todo = next((i for i in range(len(stages)) if i not in done), None)
    if todo is None or latest_checkpoint(run_dir.stage_path(todo, stages[todo].name)) is not None:
        return
    trained = [i for i in range(todo) if i in done and stages[i].kind in TRAINING and done[i].get("steps", 0) > 0]
    if trained and latest_checkpoint(run_dir.stage_path(trained[-1], stages[trained[-1]].name)) is None:
        folder = run_dir.stage_path(trained[-1], stages[trained[-1]].name)
        raise RunStateError(f"{folder}: finished stage '{stages[trained[-1]].name}' has no checkpoint left (no "
                            "latest.json naming a complete checkpoints/ckpt-*), so the run cannot continue from its "
                            "weights; restore the folder or start a new run")


def changed_keys(before: str, after: str) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two YAML texts."""
    import yaml

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): data}

    try:
        old, new = flat(yaml.safe_load(before) or {}), flat(yaml.safe_load(after) or {})
    except yaml.YAMLError:
        return []
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def trainable_parts(model: Any, cfg: RunConfig) -> str:
    """Freeze ``model.freeze``'s parts and add ``lora``'s adapters; a line saying what trains.

    A LoRA checkpoint as ``model.path`` (e.g. a warm start's) arrives with its adapters on: with ``lora``
    enabled they go on training (its own adapter settings hold); without, the run is refused."""
    from veripo.config import ConfigError
    from veripo.models.adapters import add_lora, freeze_parts, has_adapters, trainable_parameters

    freeze_parts(model, cfg.model.freeze)
    if has_adapters(model) and not cfg.lora.enabled:
        raise ConfigError(f"config key 'model.path': {cfg.model.path} is a LoRA checkpoint; set lora.enabled: "
                          "true to train its adapters on, or `veripo export` its run to train all weights")
    what = "full fine-tuning"
    if has_adapters(model):
        what = f"the LoRA adapters of {cfg.model.path}"
    elif cfg.lora.enabled:
        add_lora(model, cfg.lora, seed=cfg.seed)
        what = f"LoRA rank {cfg.lora.rank}"
    trainable, total = trainable_parameters(model)
    frozen = f", frozen: {', '.join(cfg.model.freeze)}" if cfg.model.freeze else ""
    return f"{what}{frozen}: {trainable:,} of {total:,} parameters train"


def check_lora(cfg: RunConfig, parallel: ParallelStrategy) -> None:
    """A LoRA run needs peft and a strategy that keeps whole weights on every rank (the config check cannot see
    an accelerate launch that switches sharding on)."""
    if not cfg.lora.enabled:
        return
    from veripo.config import ConfigError
    from veripo.models.adapters import require_peft

    require_peft()
    if parallel.shards_weights:
        raise ConfigError(f"config key 'lora.enabled' under {type(parallel).__name__} (weight sharding, set by "
                          "the config or the launcher): adapters are not wired into the sharded strategies; "
                          "train LoRA on one process or data parallel.")


def base_model_dir(cfg: RunConfig, run: RunDir) -> Path:
    """The model directory the run starts from: ``model.path``, or the tiny model built in the run folder."""
    return Path(cfg.model.path) if cfg.model.path is not None else run.root / "base-model"


def load_base_policy(cfg: RunConfig, run: RunDir, parallel: ParallelStrategy) -> Any:
    """The policy the run starts from, handed to the parallel strategy (which may shard or wrap it)."""
    from veripo.models import build_tiny, load_policy

    dist = parallel.info
    path = base_model_dir(cfg, run)
    if cfg.model.path is None:
        if cfg.model.build_tiny is None:
            raise ConfigError("config: set model.path to a local model directory, or model.build_tiny to tiny|small")
        if dist.is_main and not (path / "config.json").exists():
            build_tiny(path, size=cfg.model.build_tiny, seed=cfg.seed, family=cfg.model.family)
        barrier(dist)
    # the parameters are the master weights, except where the strategy keeps them itself (DeepSpeed)
    policy = load_policy(path, dtype=str(parallel.load_dtype).removeprefix("torch."),
                         device=str(pick_device(cfg.model.device)), attn_implementation=cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trained = trainable_parts(policy.model, cfg)
    note = parallel.prepare(policy.model)
    cached = open_vision_cache(policy.model, cfg.model, run.root / f"vision-cache-rank{dist.rank}",
                               parallel.shards_weights)
    if dist.is_main:
        Console(stderr=True).print("\n".join(line for line in (
            trained, f"precision: {parallel.precision.describe()}", note, cached) if line))
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
        inputs: dict[str, Path] | None = None, allow_config_change: bool = False) -> RunDir:
    """Run (or resume) the whole VerIPO loop; returns the run directory.

    ``inputs`` seeds the files later stages read (``{"pairs": PATH}`` for a DPO-only run); they are kept in
    ``state.json`` so a resumed run sees them too. A resumed run whose ``config.yaml`` was edited since it
    started is refused (RunStateError) unless ``allow_config_change`` (the diff is then recorded).
    """
    dist = init_distributed()
    console = Console(stderr=True)
    if cfg is not None:  # a setting that cannot work fails before anything is written
        check_algorithm_names(cfg)
        check_available(cfg.logging.trackers, cfg.logging.mode == "online")  # one line naming the extra
        check_engines_installed(cfg)
        strategy = make_strategy(cfg.distributed, os.environ, dist, Precision.of(cfg.model))
        check_lora(cfg, strategy)
        check_eval_workers(cfg, strategy)
    run_dir = open_run(cfg, resume, dist)
    trackers = Trackers()
    eval_workers = None
    try:
        state = run_dir.read_state()
        if resume is not None:
            from veripo.config import load

            cfg = load(RunConfig, run_dir.config_path)  # the run's own config, not the caller's
            check_config_drift(run_dir, state, allow_config_change, console, dist.is_main)
            check_algorithm_names(cfg)
            check_available(cfg.logging.trackers, cfg.logging.mode == "online")
            check_engines_installed(cfg)
            check_resumable(run_dir, plan(cfg), state)
            if dist.is_main:
                run_dir.write_state(state)
        if dist.is_main:
            for warning in cfg.warnings():
                console.print(f"[yellow]warning[/yellow]: {warning}")
        parallel = make_strategy(cfg.distributed, os.environ, dist, Precision.of(cfg.model))
        check_lora(cfg, parallel)  # again for a resumed run, whose launch may differ
        check_eval_workers(cfg, parallel)
        if inputs:
            state["inputs"] = {k: str(Path(v).resolve()) for k, v in inputs.items()}
        done = {entry["index"]: entry for entry in state.get("completed", [])}
        policy = load_base_policy(cfg, run_dir, parallel)
        if dist.is_main:
            eval_workers = start_eval_workers(cfg, base_model_dir(cfg, run_dir), parallel)
        if dist.is_main:
            trackers = open_trackers(cfg, run_dir)
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
                finished = latest_checkpoint(last_training_dir)
                if finished is None:
                    raise RunStateError(f"{last_training_dir}: this finished stage's checkpoint is gone (no "
                                        f"{last_training_dir.name}/latest.json naming a complete checkpoints/ckpt-*); "
                                        "the run cannot continue from its weights: restore the folder or start a new run")
                load_model_weights(policy.model, finished, parallel)
            # only the first stage this process runs may start from a finished stage's weights (or, with a checkpoint
            # of its own, resumes from that); every later stage continues from the weights in memory: a stage resumed
            # from its checkpoint must not hand the finished stage's weights to the stage after it
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
            if stage.kind == "sft":  # SFT uses every question; GRPO checks those it draws, DPO those of its pairs
                ctx.samples = drop_unusable(samples, encode, stage=stage.name, max_share=cfg.max_bad_share, log=ctx.log,
                                            record=stage_dir / SKIPPED_FILE if dist.is_main else None)
            if cfg.eval.heldout:
                ctx.evaluate = lambda out_root, ctx=ctx: evaluate_stage(ctx, store, out_root, eval_workers)
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
                summary["eval"] = evaluate_stage(ctx, store, workers=eval_workers)
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
            trackers.log_images({f"report/{png.stem}": png for png in sorted(report.parent.glob("*.png"))},
                                global_step)
            console.print(f"[bold green]done[/bold green]: report at {report}")
    finally:
        if eval_workers is not None:
            eval_workers.close()
        trackers.close()
        run_dir.unlock()
    return run_dir


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
    loss) is registered in ``veripo.algos``, and every reward and judge named by import path imports and has the
    right signature; a ``ConfigError`` names the key (and the choices) otherwise."""
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
        judge = (cfg.verifier if stage is None else cfg.section_for(stage, "verifier")).judge
        if is_import_path(judge):  # a built-in judge is made when it is used (the hf one loads a model)
            _load_named(f"{where}verifier.judge", lambda judge=judge: load_judge(judge))
    if is_import_path(cfg.eval.judge):
        _load_named("eval.judge", lambda: load_judge(cfg.eval.judge))
    for i, name in enumerate(cfg.rewards.extra):
        _load_named(f"rewards.extra[{i}]", lambda name=name: get_reward(name))
    _load_named("rewards", lambda: profile_for(cfg.rewards))


def _load_named(key: str, load: Callable[[], object]) -> None:
    """Load what a config key names (a user's reward or judge by import path is imported here, at the start of
    a run); its error becomes a ``ConfigError`` naming the key."""
    from veripo.config import ConfigError

    try:
        load()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"config key '{key}': {e.args[0] if e.args else e}") from None


def read_question_stats(stage_dir: Path) -> dict[str, tuple[int, int]]:
    """Latest (correct, total) rollouts per question in a GRPO stage's ``question_stats.jsonl``."""
    path = stage_dir / "question_stats.jsonl"
    if not path.exists():
        return {}
    return {row["sample_id"]: (int(row["correct"]), int(row["n"])) for row in read_jsonl(path)}
