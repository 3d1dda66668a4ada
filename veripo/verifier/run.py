"""Verify a rollouts file: check every rollout, judge its consistency, build pairs, write the results.

Outputs (docs/run-directory.md): ``verdicts.jsonl``, ``pairs.jsonl``, ``verify_summary.json`` and the judge's
``judge_cache.jsonl`` in ``out_dir``. Re-running over the same rollouts asks the judge nothing twice.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.data.jsonl import JsonlWriter, check_unique_ids, read_jsonl
from veripo.data.records import Rollout, Sample, Verdict
from veripo.rewards import parse_completion
from veripo.rewards.profiles import ScoringProfile, build_profile
from veripo.verifier.checks import is_reflective, is_repetitive
from veripo.verifier.judges import JudgeItem, make_judge
from veripo.verifier.pairs import build_pairs


@dataclass
class VerifySummary:
    rollouts: int = 0
    failed: Counter = field(default_factory=Counter)  # check -> rollouts failing it
    consistency: Counter = field(default_factory=Counter)  # label -> rollouts
    pairs: Counter = field(default_factory=Counter)
    skipped_groups: Counter = field(default_factory=Counter)
    missing_samples: int = 0
    judge: str = ""
    judge_counters: dict[str, int] = field(default_factory=dict)
    thinking_tokens_by: str = "whitespace"  # tokenizer | rollout | whitespace (see ``thinking_length``)
    judge_skipped: int = 0  # rollouts without thinking or answer: unknown without asking the judge

    @property
    def inconsistency_rate(self) -> float | None:
        """Inconsistent / judged (consistent + inconsistent); None when nothing could be judged."""
        judged = self.consistency["consistent"] + self.consistency["inconsistent"]
        return self.consistency["inconsistent"] / judged if judged else None

    def to_dict(self) -> dict[str, Any]:
        return {"rollouts": self.rollouts, "checked": self.rollouts - self.missing_samples, "failed": dict(self.failed),
                "failed_checks": dict(self.failed),  # the name docs/run-directory.md and the report use
                "consistency": dict(self.consistency),
                "inconsistency_rate": self.inconsistency_rate,
                # the same with ``unknown`` counted as not inconsistent (over every checked rollout)
                "inconsistency_rate_all": (self.consistency["inconsistent"] / sum(self.consistency.values())
                                           if sum(self.consistency.values()) else None),
                "pairs": {k: self.pairs.get(k, 0) for k in ("consistency", "penalty", "reflective")},
                "skipped_groups": dict(self.skipped_groups), "missing_samples": self.missing_samples,
                "judge": self.judge, "judge_counters": self.judge_counters,
                "judge_skipped": self.judge_skipped, "thinking_tokens_by": self.thinking_tokens_by}


def inconsistency_rate(verdicts: Iterable[Verdict]) -> float | None:
    """Share of judged verdicts whose answer contradicts the thinking (``unknown`` ones are left out)."""
    labels = Counter(v.consistency for v in verdicts)
    judged = labels["consistent"] + labels["inconsistent"]
    return labels["inconsistent"] / judged if judged else None


def thinking_length(rollout: Rollout, thinking: str | None, tokenizer: Any = None) -> tuple[int, str]:
    """Thinking length in tokens and how it was counted: ``tokenizer`` (the given tokenizer's encoding of the
    thinking), ``rollout`` (the count the rollout engine recorded with the policy's tokenizer) or
    ``whitespace`` (whitespace-separated words, when neither is available)."""
    if tokenizer is not None:
        return len(tokenizer.encode(thinking or "", add_special_tokens=False)), "tokenizer"
    if rollout.thinking_tokens:
        return rollout.thinking_tokens, "rollout"
    return len((thinking or "").split()), "whitespace"


def check_rollout(rollout: Rollout, sample: Sample, profile: Any, cfg: Any, tokenizer: Any = None) -> Verdict:
    """Every rule check of one rollout (consistency is filled in by the judge afterwards)."""
    parsed = parse_completion(rollout.text)
    scores = profile.score(rollout.text, sample)
    accuracy = float(scores.get("accuracy", 0.0))
    thinking_tokens, counted_by = thinking_length(rollout, parsed.thinking, tokenizer)
    repetitive = is_repetitive(rollout.text, cfg.repetition_ngram, cfg.repetition_threshold)
    truncated = rollout.truncated or parsed.truncated
    # the verifier's own threshold if it sets one, else the profile's: the one GRPO's gates used
    threshold = profile.correct_threshold if cfg.correct_threshold is None else cfg.correct_threshold
    verdict = Verdict(
        rollout_id=rollout.id, sample_id=rollout.sample_id, format_ok=parsed.format_ok, accuracy=accuracy,
        correct=accuracy >= threshold, thinking_tokens=thinking_tokens, repetitive=repetitive,
        truncated=truncated, reflective=is_reflective(parsed.thinking, sample),
    )
    if not parsed.format_ok:
        verdict.reasons.append("format: " + ", ".join(parsed.problems or ("not <think>...</think><answer>...</answer>",)))
    if repetitive:
        verdict.reasons.append("repetitive")
    if truncated:
        verdict.reasons.append("truncated")
    if thinking_tokens < cfg.min_thinking_tokens:
        verdict.reasons.append(f"thinking shorter than {cfg.min_thinking_tokens} tokens ({counted_by})")
        verdict.format_ok = False
    if not verdict.correct:
        verdict.reasons.append(f"accuracy {accuracy:.2f}")
    if verdict.reflective:
        verdict.reasons.append("reflective: changes its conclusion after noticing a mistake")
    return verdict


def verify_rollouts(rollouts: list[Rollout] | Path, samples: dict[str, Sample], cfg: Any, out_dir: Path, *,
                    profile_name: str = "veripo", judge_name: str | None = None, tokenizer: Any = None,
                    show_progress: bool = False, judge_batch: int = 64,
                    pairs_path: Path | None = None, profile: ScoringProfile | None = None) -> VerifySummary:
    """Check and judge ``rollouts`` (records, or a rollouts.jsonl path), build pairs, write verdicts/pairs/
    summary to ``out_dir``. ``samples``: sample id -> sample (rollouts without one are counted, not checked).
    ``tokenizer`` counts thinking tokens (else the rollout's own count, else whitespace words).
    ``pairs_path`` puts the pairs elsewhere than ``out_dir/pairs.jsonl``. ``profile`` (the run's
    ``profile_for(cfg.rewards)``, as GRPO scored with) replaces the plain profile ``profile_name``."""
    if isinstance(rollouts, (str, Path)):
        rollouts = load_rollouts(Path(rollouts))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = profile or build_profile(profile_name)
    summary = VerifySummary(rollouts=len(rollouts))
    known = [r for r in rollouts if r.sample_id in samples]
    summary.missing_samples = len(rollouts) - len(known)
    verdicts = [check_rollout(r, samples[r.sample_id], profile, cfg, tokenizer) for r in known]
    summary.thinking_tokens_by = ("tokenizer" if tokenizer is not None else
                                  "rollout" if known and all(r.thinking_tokens for r in known) else "whitespace")
    judge = make_judge(cfg, judge_name, out_dir / "judge_cache.jsonl")
    summary.judge = judge.name
    items = [_judge_item(r, samples[r.sample_id]) for r in known]
    askable = [n for n, item in enumerate(items) if item.thinking and item.answer]
    try:
        judged = dict(zip(askable, _judge_in_batches(judge, [items[n] for n in askable], judge_batch, show_progress)))
    finally:
        judge.close()
    summary.judge_skipped = len(items) - len(askable)
    for n, verdict in enumerate(verdicts):
        if n not in judged:  # nothing to compare: not worth a judge request
            verdict.consistency, verdict.judge = "unknown", judge.name
            verdict.reasons.append("judge: no thinking or no answer to compare")
            continue
        result = judged[n]
        verdict.consistency = result.label
        verdict.judge = judge.name
        if result.label == "inconsistent":
            verdict.reasons.append("answer contradicts the thinking")
        if result.error:
            verdict.reasons.append(f"judge: {result.error}")
    summary.judge_counters = judge.counters()
    for v in verdicts:
        summary.consistency[v.consistency] += 1
        for check, failed in (("format", not v.format_ok), ("accuracy", not v.correct), ("repetition", v.repetitive),
                              ("truncation", v.truncated), ("consistency", v.consistency == "inconsistent")):
            summary.failed[check] += int(failed)
    groups: dict[str, list[Rollout]] = {}
    for r in known:  # one group = one question in one rollout batch (the rollouts GRPO compared)
        groups.setdefault(f"{r.sample_id}/{r.stage}/{r.step}", []).append(r)
    pairs, stats = build_pairs(groups, {v.rollout_id: v for v in verdicts}, cfg, samples)
    summary.pairs, summary.skipped_groups = stats.pairs, stats.skipped
    _rewrite(out_dir / "verdicts.jsonl", verdicts)
    pairs_path = Path(pairs_path) if pairs_path is not None else out_dir / "pairs.jsonl"
    pairs_path.parent.mkdir(parents=True, exist_ok=True)
    _rewrite(pairs_path, pairs)
    tmp = out_dir / "verify_summary.json.tmp"
    tmp.write_text(json.dumps(summary.to_dict(), indent=2))
    os.replace(tmp, out_dir / "verify_summary.json")
    return summary


def _judge_item(rollout: Rollout, sample: Sample) -> JudgeItem:
    """The thinking and answer the rollout engine recorded, else parsed from the text."""
    parsed = parse_completion(rollout.text) if rollout.thinking is None or rollout.answer is None else None
    return JudgeItem(sample, rollout.thinking if parsed is None else parsed.thinking,
                     rollout.answer if parsed is None else parsed.answer)


def _judge_in_batches(judge: Any, items: list[JudgeItem], batch: int, show_progress: bool) -> list[Any]:
    """Judge ``items`` ``batch`` at a time (each batch's answers reach the cache before the next is asked,
    so a killed run loses at most one batch), with a progress bar when asked."""
    from rich.progress import Progress

    results: list[Any] = []
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"judging ({judge.name})", total=len(items))
        for start in range(0, len(items), max(1, batch)):
            results.extend(judge.judge(items[start:start + batch]))
            progress.update(task, completed=len(results))
    return results


def _rewrite(path: Path, records: list[Any]) -> None:
    """Write a whole JSONL file atomically (a re-run replaces it; a kill leaves the old one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    with JsonlWriter(tmp, fsync="batch") as w:
        w.write_many(records)
    os.replace(tmp, path)


def load_rollouts(path: Path) -> list[Rollout]:
    """The rollouts of a file; JsonlError for a malformed record or a repeated rollout id."""
    rollouts = read_jsonl(path, Rollout)
    check_unique_ids(rollouts, path)
    return rollouts
