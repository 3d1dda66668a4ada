"""Evaluate a policy on one benchmark: greedy decoding in batches, resumable, scored by every profile.

The loop::

    done = ids already in predictions.jsonl with status "ok"
    for each batch of the remaining samples:
        encode each sample (decode its media; missing or broken media -> a "missing_media" row)
        greedy-decode the batch through the rollout engine (one engine call per batch)
        score each response with every scoring profile, judge its consistency (optional)
        append the rows to predictions.jsonl (one fsync per batch)
    metrics.json + the Video-R1 / VerIPO exports from all rows

With several processes (``dist``, launched by torchrun or accelerate) every rank decodes its share of the
remaining items (item ``i`` on rank ``i % world``, ``batch_size`` per rank per round) and rank 0 gathers
each round's responses, scores and judges them and writes the rows; the other ranks return ``{}``. One process
can instead hand whole batches to local decode workers (``veripo.eval.workers``; the same predictions).

Decoding follows VerIPO's evaluation: greedy, repetition penalty 1.05, stop after ``</answer>`` or an
end-of-text token. A killed evaluation continues where it stopped: rows already written are never decoded
again, and a row is written only once complete (a torn last line is dropped and that item redone).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veripo.data.jsonl import JsonlWriter
from veripo.data.records import Sample
from veripo.errors import UnusableSample
from veripo.eval.metrics import compute_metrics
from veripo.eval.predictions import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    SETTINGS_FILE,
    STATUS_MISSING,
    STATUS_OK,
    read_predictions,
    write_json_atomic,
    write_peer_exports,
)
from veripo.rewards import PROFILES, get_profile, parse_completion, score_batch
from veripo.rollout.engine import GroupOutput, SamplingParams

if TYPE_CHECKING:
    from veripo.eval.workers import DecodeWorkers

log = logging.getLogger(__name__)

Encode = Callable[[Sample], dict[str, Any]]
# judge(samples, responses) -> one label per response: "consistent" | "inconsistent" | "unknown".
ConsistencyJudge = Callable[[Sequence[Sample], Sequence[str]], list[str]]


def greedy_params(max_new_tokens: int, repetition_penalty: float = 1.05) -> SamplingParams:
    """VerIPO's evaluation decoding: one greedy response, repetition penalty 1.05, stop after ``</answer>``."""
    return SamplingParams(num_generations=1, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens,
                          greedy=True, repetition_penalty=repetition_penalty, seed=0)


def count_tokens(tokenizer: Any, text: str | None) -> int:
    """Tokens of ``text`` without special tokens (0 for None or empty)."""
    if not text:
        return 0
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return len(tok.encode(text, add_special_tokens=False))


def prediction_row(sample: Sample, out: GroupOutput, *, benchmark: str, tokenizer: Any,
                   scores: dict[str, dict[str, float]], consistency: str | None) -> dict[str, Any]:
    """The ``predictions.jsonl`` row of one decoded response (fields: veripo.eval.predictions)."""
    response = out.responses[0]
    parsed = parse_completion(response.text)
    row = {"id": sample.id, "benchmark": benchmark, "status": STATUS_OK, "sample": sample.to_dict(),
           "output": response.text, "prediction": parsed.answer, "thinking": parsed.thinking,
           "format_ok": parsed.format_ok, "prompt_tokens": out.prompt_tokens,
           "response_tokens": len(response.token_ids), "thinking_tokens": count_tokens(tokenizer, parsed.thinking),
           "finish_reason": response.finish_reason, "scores": scores}
    if consistency is not None:
        row["consistency"] = consistency
    return row


def missing_media_row(sample: Sample, reason: str, *, benchmark: str) -> dict[str, Any]:
    return {"id": sample.id, "benchmark": benchmark, "status": STATUS_MISSING, "reason": reason,
            "sample": sample.to_dict()}


def score_all_profiles(texts: Sequence[str], samples: Sequence[Sample],
                       profiles: Sequence[str]) -> list[dict[str, dict[str, float]]]:
    """``[{profile: {"accuracy", "format", "total"}}]`` per response, each profile's own ``score``; an item
    whose scoring raises scores the profile's zero (counted in the log), never stopping the evaluation."""
    per_item: list[dict[str, dict[str, float]]] = [{} for _ in texts]
    for name in profiles:
        scored = score_batch(list(texts), list(samples), get_profile(name), workers=0)
        if scored.failures:
            log.warning("profile %s: %s", name, dict(scored.failures))
        for item, score in zip(per_item, scored):
            item[name] = dict(score)
    return per_item


def check_settings(path: Path, settings: dict[str, Any], *, has_predictions: bool) -> None:
    """Record ``settings`` at ``path``, or refuse to add predictions made under different ones: a resumed
    evaluation must not mix responses of two models, prompts or decoding settings."""
    settings = json.loads(json.dumps(settings))  # as stored (tuples -> lists)
    if path.exists() and has_predictions:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable ({e}); delete it and {path.parent / PREDICTIONS_FILE} to start over")
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            what = "; ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in changed.items())
            raise ValueError(f"{path.parent} holds predictions made with other settings ({what}); "
                             f"use another output folder, or delete it to start over")
    write_json_atomic(path, settings)


def _decode_batch(batch: list[Sample], encode: Encode, engine: Any, params: SamplingParams,
                  benchmark: str) -> tuple[list[dict[str, Any]], list[str], list[GroupOutput]]:
    """Greedy responses to the batch's readable samples: (missing_media rows of the others, ids of the
    decoded samples, their outputs)."""
    ready, prompts, missing = [], [], []
    for sample in batch:
        try:
            prompts.append(encode(sample))
            ready.append(sample.id)
        except (UnusableSample, FileNotFoundError) as e:  # unreadable media, a prompt over the token limit
            missing.append(missing_media_row(sample, str(e), benchmark=benchmark))
    outputs = engine.generate(prompts, params) if prompts else []
    return missing, ready, list(outputs)


def evaluate(model: Any, tokenizer: Any, encode: Encode, samples: Sequence[Sample], *, out_dir: str | Path,
             benchmark: str, profile: str = "veripo-eval", max_new_tokens: int = 1024, batch_size: int = 8,
             repetition_penalty: float = 1.05, judge: ConsistencyJudge | None = None, judge_name: str | None = None,
             key: str | None = None, profiles: Sequence[str] | None = None, engine: Any = None,
             settings: dict[str, Any] | None = None, show_progress: bool = True, dist: Any = None,
             workers: DecodeWorkers | None = None) -> dict[str, Any]:
    """Evaluate ``samples`` and write ``predictions.jsonl``, ``metrics.json`` and the peer exports to ``out_dir``.

    Args:
        model, tokenizer: the policy (Qwen2-VL / Qwen2.5-VL on transformers).
        encode: sample -> model inputs (batch of one), e.g. ``veripo.models.inputs.SampleEncoder``; raises
            ``MediaError`` for missing or broken media, which is recorded, never fatal.
        samples: the benchmark's questions (unique ids).
        out_dir: the benchmark's output folder; rows already there are kept and their items skipped.
        benchmark: the benchmark name written in rows and metrics; key: its canonical settings key (names
            the VerIPO export).
        profile: the scoring profile of the headline ``accuracy``; every profile in ``profiles`` (default:
            all registered) scores each response.
        max_new_tokens, repetition_penalty: greedy decoding settings.
        batch_size: questions per engine call.
        judge: labels each response's consistency for the inconsistency rate
            (``veripo.verifier.judges.make_eval_judge``); judge_name is recorded in the metrics.
        engine: a ``RolloutEngine`` (default: ``HFRolloutEngine(model, tokenizer)``).
        settings: what else decides the responses (model, prompt style, media settings); with the decoding
            settings it is kept in ``out_dir/settings.json``, and resuming under different ones is refused.
        dist: a ``veripo.parallel.DistInfo``; with ``world > 1`` every rank must call this with the
            same samples and settings (only rank 0 needs the judge, only rank 0 touches ``out_dir``).
        workers: ``veripo.eval.workers.DecodeWorkers`` holding the same model, to decode a share of the batches
            in other local processes (one process only: with ``dist.world > 1`` the ranks share the work);
            the predictions are the same as without them.
    Returns: the metrics dict (also written to ``out_dir/metrics.json``); ``{}`` on ranks other than 0.
    Raises:
        ValueError: repeated sample ids, a bad batch size, or ``out_dir`` holding predictions made with
            other settings (the message names them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and dist is not None and dist.world > 1:
        raise ValueError("evaluate: decode workers serve one process; with several ranks each decodes a share")
    profiles = list(profiles or PROFILES)
    get_profile(profile)
    if profile not in profiles:
        profiles.append(profile)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"benchmark {benchmark!r}: sample ids must be unique; repeated: {dupes}")
    from veripo.parallel import DistInfo, broadcast_object, gather_objects

    dist = dist or DistInfo()
    out_dir = Path(out_dir)
    path = out_dir / PREDICTIONS_FILE
    decoding = {"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty, "greedy": True,
                **(settings or {})}
    todo_ids = None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        earlier = read_predictions(path)
        check_settings(out_dir / SETTINGS_FILE, decoding, has_predictions=bool(earlier))
        done = {i for i, row in earlier.items() if row.get("status") == STATUS_OK}
        todo_ids = [s.id for s in samples if s.id not in done]
        if done:
            log.info("%s: %d of %d items already predicted in %s; evaluating the other %d",
                     benchmark, len(samples) - len(todo_ids), len(samples), path, len(todo_ids))
    todo_ids = broadcast_object(dist, todo_ids)  # rank 0 alone reads what a killed evaluation left
    by_id = {s.id: s for s in samples}
    todo = [by_id[i] for i in todo_ids]
    mine = dist.shard(todo)
    rounds = -(-len(todo) // (batch_size * dist.world))  # the same on every rank: each round gathers once
    if engine is None:
        from veripo.rollout.hf_engine import HFRolloutEngine

        engine = HFRolloutEngine(model, tokenizer, max_batch_questions=batch_size)
    params = greedy_params(max_new_tokens, repetition_penalty)
    started = time.perf_counter()

    def decode_here(batch: Sequence[Sample]) -> Any:
        return _decode_batch(list(batch), encode, engine, params, benchmark)

    if not dist.is_main:
        for r in range(rounds):
            gather_objects(dist, [decode_here(mine[r * batch_size:(r + 1) * batch_size])])
        return {}
    if workers is not None and todo:
        workers.begin(model, encode)

    def decoded_rounds() -> Any:
        """Each round's decoded batches, in item order: gathered from the ranks, or decoded by this process and
        its decode workers (consecutive batches of the remaining items, one per participant)."""
        if workers is None:
            for r in range(rounds):
                yield gather_objects(dist, [decode_here(mine[r * batch_size:(r + 1) * batch_size])])
            return
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        start = 0
        while start < len(batches):
            group = batches[start:start + 1 + workers.alive]
            start += len(group)
            yield workers.decode(group, decode_here, params, benchmark)

    with JsonlWriter(path, kind="prediction", fsync="batch", batch_size=batch_size) as writer, \
            _progress(show_progress, benchmark, len(todo)) as advance:
        for decoded in decoded_rounds():
            for missing, ready_ids, outputs in decoded:
                for row in missing:
                    writer.write(row)
                ready = [by_id[i] for i in ready_ids]
                texts = [o.responses[0].text for o in outputs]
                scores = score_all_profiles(texts, ready, profiles)
                labels = judge(ready, texts) if judge is not None and ready else [None] * len(ready)
                for sample, out, score, label in zip(ready, outputs, scores, labels):
                    writer.write(prediction_row(sample, out, benchmark=benchmark, tokenizer=tokenizer, scores=score,
                                                consistency=label))
                writer.sync()
                advance(len(ready) + len(missing), len(missing))
    rows = read_predictions(path)
    current = [rows[i] for i in ids if i in rows]
    metrics = compute_metrics(current, benchmark=benchmark, profile=profile, key=key, judge_name=judge_name)
    metrics["wall_time_s"] = round(time.perf_counter() - started, 3)
    metrics["resumed_items"] = len(samples) - len(todo)
    metrics["settings"] = {**decoding, "batch_size": batch_size}
    metrics["exports"] = write_peer_exports(current, out_dir, key or benchmark)
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    return metrics


class _progress:
    """A rich progress bar (items decoded, missing media so far), or nothing when disabled."""

    def __init__(self, enabled: bool, benchmark: str, total: int) -> None:
        self.enabled, self.benchmark, self.total = enabled, benchmark, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            return lambda n, missing: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("missing media: {task.fields[missing]}"), TimeElapsedColumn(),
                             TimeRemainingColumn())
        self._bar.start()
        task = self._bar.add_task(f"eval {self.benchmark}", total=self.total, missing=0)
        counted = {"missing": 0}

        def advance(n: int, missing: int) -> None:
            counted["missing"] += missing
            self._bar.update(task, advance=n, missing=counted["missing"])

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
