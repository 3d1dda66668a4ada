"""Held-out evaluation after a training stage: greedy decoding on ``eval.heldout`` (resumable: a killed
evaluation continues where it stopped; with several processes each decodes a share), accuracy, lengths and
the inconsistency rate from the configured judge, written to ``<stage>/eval/<benchmark>/`` and returned for
``summary.json``. ``eval.workers`` > 1 adds local processes that decode a share of every evaluation
(``veripo.eval.workers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veripo.config import ConfigError, RunConfig
from veripo.eval import evaluate
from veripo.eval.workers import DecodeWorkers
from veripo.parallel import ParallelStrategy
from veripo.recipes.common import pick_device
from veripo.recipes.context import StageContext
from veripo.recipes.sources import SampleStore

SUMMARY_KEYS = ("accuracy", "response_len", "thinking_len", "inconsistency_rate", "format_rate", "truncated_rate",
                "n", "n_missing_media", "by_type", "by_task", "wall_time_s")


def evaluate_stage(ctx: StageContext, store: SampleStore, out_root: Path | None = None,
                   workers: DecodeWorkers | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per held-out benchmark, written under ``out_root`` (default ``<stage>/eval``). Every rank decodes
    its share of the items (or, on one process, this one and its ``workers``); rank 0 judges, writes and returns
    the metrics (other ranks get an empty dict)."""
    cfg = ctx.cfg.eval
    out_root = out_root or ctx.stage_dir / "eval"
    judge, judge_name = consistency_judge(ctx) if ctx.dist.is_main else (None, cfg.judge)
    results: dict[str, dict[str, Any]] = {}
    for source in cfg.heldout:
        samples = store.load(source).samples
        name = source.name or Path(source.path).name
        with ctx.parallel.gathered_weights():  # each rank decodes its share for as long as it needs
            metrics = evaluate(
                ctx.policy.model, ctx.policy.tokenizer, ctx.encode, samples,
                out_dir=out_root / name, benchmark=name, profile=cfg.profile,
                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                repetition_penalty=cfg.repetition_penalty, judge=judge, judge_name=judge_name,
                settings={"prompt": ctx.cfg.model.prompt, "media": vars(ctx.cfg.media).copy()},
                show_progress=ctx.show_progress, dist=ctx.dist, workers=workers,
            )
        if not ctx.dist.is_main:
            continue
        results[name] = {k: metrics.get(k) for k in SUMMARY_KEYS}
        acc, inc = metrics.get("accuracy"), metrics.get("inconsistency_rate")
        ctx.log(f"eval {name}: accuracy {acc if acc is None else round(acc, 3)}, "
                f"response {metrics.get('response_len') or 0:.1f} tokens, inconsistency "
                f"{inc if inc is None else round(inc, 3)} ({metrics.get('n')} items)")
    return results


def consistency_judge(ctx: StageContext) -> tuple[Any, str]:
    """``judge(samples, responses) -> labels`` for evaluations, from ``eval.judge`` and the verifier settings."""
    from veripo.verifier.judges import make_eval_judge

    verifier = ctx.cfg.verifier
    return make_eval_judge(ctx.cfg.eval.judge, verifier, cache_dir=ctx.stage_dir / "eval"), ctx.cfg.eval.judge


def check_eval_workers(cfg: RunConfig, parallel: ParallelStrategy) -> None:
    """Refuse ``eval.workers`` > 1 where a worker's copy of the model would not decode as the run's own does."""
    if cfg.eval.workers == 1:
        return
    key = f"config key 'eval.workers': {cfg.eval.workers}"
    if parallel.info.world > 1:
        raise ConfigError(f"{key} with {parallel.info.world} processes (torchrun / accelerate launch): every rank "
                          "already decodes a share of the held-out items; set eval.workers: 1.")
    if pick_device(cfg.model.device).type != "cpu":
        raise ConfigError(f"{key} on {cfg.model.device}: decode workers are CPU processes, each with a copy of "
                          "the model; on a GPU launch several processes instead, or set eval.workers: 1.")
    if cfg.lora.enabled:
        raise ConfigError(f"{key} with lora.enabled: a worker loads the plain model and cannot take the adapters' "
                          "weights; set eval.workers: 1.")
    if parallel.precision.mixed:
        raise ConfigError(f"{key} with model.dtype {cfg.model.dtype} over {cfg.model.master_dtype} master weights: "
                          "a worker decodes in one dtype; set eval.workers: 1 or model.master_dtype to model.dtype.")


def start_eval_workers(cfg: RunConfig, model_dir: Path, parallel: ParallelStrategy) -> DecodeWorkers | None:
    """``eval.workers - 1`` decode workers loading ``model_dir`` (started now: they load while the first stage
    trains), or None when there is nothing for them to do. The run has checked the setting (``check_eval_workers``)."""
    if cfg.eval.workers == 1 or not cfg.eval.heldout:
        return None
    import torch

    return DecodeWorkers(cfg.eval.workers - 1, model_dir, dtype=str(parallel.load_dtype).removeprefix("torch."),
                         batch_size=cfg.eval.batch_size, threads=torch.get_num_threads(),
                         attn_implementation=cfg.model.attn_implementation)
