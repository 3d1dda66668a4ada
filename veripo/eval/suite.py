"""Evaluate a policy on benchmark files: load each file, pick its settings, encode with them, evaluate.

Output layout (``out_dir``)::

    metrics.json                 {benchmark: metrics} for every benchmark evaluated into this folder
    <benchmark>/predictions.jsonl
    <benchmark>/metrics.json
    <benchmark>/videor1_results.json, <benchmark>/<key>.veripo_predictions.json
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veripo.config import ModelConfig
from veripo.data.loaders import load_samples
from veripo.eval.benchmarks import assign_numeric_types, benchmark_name, settings_for
from veripo.eval.predictions import METRICS_FILE, write_json_atomic
from veripo.eval.runner import ConsistencyJudge, evaluate

log = logging.getLogger(__name__)

DEFAULT_PROFILE_FOR_PROMPT = {"veripo": "veripo-eval", "videor1": "videor1-eval"}


@dataclass(frozen=True)
class SuiteOptions:
    """Settings shared by every benchmark of one ``veripo eval`` call.

    ``profile`` None: the prompt's own scorer (``veripo`` -> ``veripo-eval``, ``videor1`` -> ``videor1-eval``).
    ``fps``/``max_frames``/``max_pixels`` override every benchmark's settings when given.
    """

    prompt: str = "veripo"
    profile: str | None = None
    media_root: str | None = None
    limit: int | None = None
    max_new_tokens: int = 4096
    batch_size: int = 8
    repetition_penalty: float = 1.05
    fps: float | None = None
    max_frames: int | None = None
    max_pixels: int | None = None
    cache_dir: str | None = None
    show_progress: bool = True
    max_prompt_tokens: int = ModelConfig.max_prompt_tokens  # longer prompts are skipped and counted like unreadable media


def evaluate_files(policy: Any, benches: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                   options: SuiteOptions = SuiteOptions(), *, judge: ConsistencyJudge | None = None,
                   judge_name: str | None = None, engine: Any = None, dist: Any = None,
                   workers: Any = None) -> dict[str, dict[str, Any]]:
    """Evaluate ``policy`` (a ``veripo.models.Policy``) on each benchmark file; returns {benchmark: metrics}.

    With ``dist`` (a ``veripo.parallel.DistInfo`` of several processes) every rank decodes a share
    of each benchmark and rank 0 alone judges and writes; the other ranks return ``{}``.

    Raises ``veripo.data.loaders.DataError`` for a file that cannot be read at all (bad JSON, unknown
    format); bad records are skipped and counted (``skipped_records`` in the metrics).
    """
    from veripo.models.inputs import SampleEncoder

    out_dir = Path(out_dir)
    profile = options.profile or DEFAULT_PROFILE_FOR_PROMPT[options.prompt]
    names = [benchmark_name(b) for b in benches]
    if len(set(names)) != len(names):
        raise ValueError(f"two benchmark files share an output folder name: {names}; rename one")
    results: dict[str, dict[str, Any]] = {}
    for bench, name in zip(benches, names):
        loaded = load_samples(bench, media_root=options.media_root, limit=options.limit, require_media=False)
        settings = settings_for(name, fps=options.fps, max_frames=options.max_frames, max_pixels=options.max_pixels)
        if loaded.format == "veripo-eval":
            assign_numeric_types(loaded.samples, settings)
        # memo_size=0: each question is encoded once in an evaluation, so keeping encodings only costs memory.
        encode = SampleEncoder(policy.processor, settings.media_config(options.cache_dir), style=options.prompt,
                               cache_dir=options.cache_dir, memo_size=0, max_prompt_tokens=options.max_prompt_tokens)
        media = {"fps": settings.fps, "max_frames": settings.max_frames, "min_frames": settings.min_frames,
                 "min_pixels": settings.min_pixels, "max_pixels": settings.max_pixels}
        decided_by = {"model": str(Path(policy.path).resolve()), "prompt": options.prompt, "media": media}
        metrics = evaluate(policy.model, policy.tokenizer, encode, loaded.samples, out_dir=out_dir / name,
                           benchmark=name, key=settings.key, profile=profile, max_new_tokens=options.max_new_tokens,
                           batch_size=options.batch_size, repetition_penalty=options.repetition_penalty,
                           judge=judge, judge_name=judge_name, engine=engine, settings=decided_by,
                           show_progress=options.show_progress, dist=dist, workers=workers)
        if not metrics:  # a rank other than 0: its share is decoded, rank 0 writes
            continue
        metrics["source_file"] = str(bench)
        metrics["format"] = loaded.format
        metrics["prompt"] = options.prompt
        metrics["media"] = media
        metrics["skipped_records"] = [str(s) for s in loaded.skipped]
        write_json_atomic(out_dir / name / METRICS_FILE, metrics)
        results[name] = metrics
    if dist is None or dist.is_main:
        _merge_summary(out_dir / METRICS_FILE, results)
    return results


def _merge_summary(path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Add ``results`` to the folder's {benchmark: metrics} summary, keeping benchmarks evaluated earlier."""
    summary: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            summary = old if isinstance(old, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: unreadable summary replaced", path)
    summary.update(results)
    write_json_atomic(path, summary)
