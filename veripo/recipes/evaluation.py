"""Held-out evaluation after a training stage: greedy decoding on ``eval.heldout`` (resumable: a killed
evaluation continues where it stopped; with several processes each decodes a share), accuracy, lengths and
the inconsistency rate from the configured judge, written to ``<stage>/eval/<benchmark>/`` and returned for
``summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veripo.eval import evaluate
from veripo.recipes.context import StageContext
from veripo.recipes.sources import SampleStore

SUMMARY_KEYS = ("accuracy", "response_len", "thinking_len", "inconsistency_rate", "format_rate", "truncated_rate",
                "n", "n_missing_media", "by_type", "by_task", "wall_time_s")


def evaluate_stage(ctx: StageContext, store: SampleStore, out_root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per held-out benchmark, written under ``out_root`` (default ``<stage>/eval``). Every rank decodes
    its share of the items; rank 0 judges, writes and returns the metrics (other ranks get an empty dict)."""
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
                show_progress=ctx.show_progress, dist=ctx.dist,
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
