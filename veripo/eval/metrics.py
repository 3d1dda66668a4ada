"""Benchmark metrics from prediction rows: pure functions over ``predictions.jsonl`` rows.

Per benchmark (``metrics.json``):

- ``accuracy``: mean of the primary profile's ``accuracy`` over evaluated items (0-1); ``accuracy_all_items``
  counts items with missing media as wrong (the denominator the full benchmark would have).
- ``by_type`` / ``n_by_type``: the same per problem type; ``by_task`` / ``n_by_task``: per task, for items
  whose sample names one (``extra["task"]``, as the synthetic tasks do; empty otherwise).
- ``mra`` / ``n_mra``: VSI-Bench mean relative accuracy (thresholds 0.50..0.95, the registry's
  ``accuracy_mra``) over numeric-estimation (``regression``) items; None without any.
- ``profiles``: mean ``accuracy``/``format``/``total`` of every scoring profile on the same predictions.
- ``peer_scores``: each peer scorer's published single number: Video-R1 ``eval_bench.py`` ``final_acc``
  (``mean_acc`` over non-regression items, ``mean_mra`` over regression items) and VerIPO
  ``calculate_score.py`` (``acc``: its sum of item scores over the number of items).
- ``response_len`` / ``thinking_len``: mean tokens of the response and of its ``<think>`` text;
  ``format_rate``: share in the lenient ``<think>..</think><answer>..</answer>`` format; ``truncated_rate``:
  share stopped by ``max_new_tokens``.
- ``inconsistency_rate``: share of judged responses whose answer contradicts their thinking (VerIPO Fig. 1C),
  over responses the judge could label; None when no judge ran.
- ``n``, ``n_total``, ``n_missing_media``, ``missing_media`` (ids and reasons).

The report reads ``accuracy``, ``response_len``, ``thinking_len``, ``inconsistency_rate``, ``n``,
``by_type`` and ``by_task`` (docs/run-directory.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from veripo.data.records import Sample
from veripo.eval.predictions import (
    STATUS_MISSING,
    STATUS_OK,
    videor1_final_acc,
    videor1_row,
)
from veripo.rewards import get_reward

NUMERIC_ESTIMATION_TYPES = ("regression",)  # scored by MRA (VSI-Bench); "numerical" is exact-value


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mra_scores(rows: Iterable[dict[str, Any]]) -> list[float]:
    """MRA of each numeric-estimation row, through the rewards registry's ``accuracy_mra``."""
    mra = get_reward("accuracy_mra")
    return [mra(r["output"], Sample.from_dict(r["sample"])) for r in rows
            if r["sample"]["problem_type"] in NUMERIC_ESTIMATION_TYPES]


def inconsistency_rate_of(labels: Iterable[str | None]) -> tuple[float | None, int]:
    """(share of ``inconsistent`` among ``consistent``/``inconsistent`` labels, that count); ``unknown`` and
    missing labels are left out. (None, 0) when nothing was labelled. The same definition as the verifier's
    ``veripo.verifier.run.inconsistency_rate`` over verdicts (tested), here over bare labels."""
    known = [label for label in labels if label in ("consistent", "inconsistent")]
    if not known:
        return None, 0
    return sum(label == "inconsistent" for label in known) / len(known), len(known)


def peer_scores(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The single numbers Video-R1's and VerIPO's own evaluation scripts would print for these rows."""
    videor1 = [videor1_row(r) for r in rows]
    veripo = [r["scores"]["veripo-eval"]["accuracy"] for r in rows]
    return {"videor1-eval": videor1_final_acc(videor1),
            "veripo-eval": {"acc": sum(veripo) / len(veripo) if veripo else 0.0}}


def compute_metrics(rows: Iterable[dict[str, Any]], *, benchmark: str, profile: str = "veripo-eval",
                    key: str | None = None, judge_name: str | None = None) -> dict[str, Any]:
    """Metrics of one benchmark's prediction rows (see the module docstring for every field).

    Args:
        rows: prediction rows (``status`` ok or missing_media), one per item.
        benchmark: the benchmark's name; key: its canonical settings key.
        profile: the scoring profile whose ``accuracy`` is the headline number.
        judge_name: the judge that labelled ``consistency`` (recorded only).
    Raises:
        KeyError: a row was scored without ``profile`` (the message names the row and the profiles it has).
    """
    rows = list(rows)
    done = [r for r in rows if r.get("status") == STATUS_OK]
    missing = [r for r in rows if r.get("status") == STATUS_MISSING]
    for r in done:
        if profile not in r["scores"]:
            raise KeyError(f"prediction {r['id']!r} has no scores for profile {profile!r}; "
                           f"it has {sorted(r['scores'])}")
    accuracy = [r["scores"][profile]["accuracy"] for r in done]
    by_type: dict[str, list[float]] = defaultdict(list)
    by_task: dict[str, list[float]] = defaultdict(list)
    for r, acc in zip(done, accuracy):
        by_type[r["sample"]["problem_type"]].append(acc)
        task = (r["sample"].get("extra") or {}).get("task")
        if isinstance(task, str) and task:
            by_task[task].append(acc)
    profile_names = sorted(set().union(*(r["scores"] for r in done))) if done else []
    profiles = {name: {part: _mean([r["scores"][name][part] for r in done if name in r["scores"]]) or 0.0
                       for part in ("accuracy", "format", "total")} for name in profile_names}
    mra = mra_scores(done)
    rate, n_judged = inconsistency_rate_of(r.get("consistency") for r in done)
    n_total = len(done) + len(missing)
    return {
        "benchmark": benchmark, "key": key or benchmark, "profile": profile,
        "n": len(done), "n_total": n_total, "n_missing_media": len(missing),
        "accuracy": _mean(accuracy),
        "accuracy_all_items": sum(accuracy) / n_total if n_total else None,
        "by_type": {t: _mean(v) for t, v in sorted(by_type.items())},
        "n_by_type": {t: len(v) for t, v in sorted(by_type.items())},
        "by_task": {t: _mean(v) for t, v in sorted(by_task.items())},
        "n_by_task": {t: len(v) for t, v in sorted(by_task.items())},
        "mra": _mean(mra), "n_mra": len(mra),
        "profiles": profiles,
        "peer_scores": peer_scores(done) if done and "videor1-eval" in profiles and "veripo-eval" in profiles else {},
        "response_len": _mean([float(r["response_tokens"]) for r in done]),
        "thinking_len": _mean([float(r["thinking_tokens"]) for r in done]),
        "format_rate": _mean([1.0 if r.get("format_ok") else 0.0 for r in done]),
        "truncated_rate": _mean([1.0 if r.get("finish_reason") == "length" else 0.0 for r in done]),
        "inconsistency_rate": rate, "n_judged": n_judged, "judge": judge_name,
        "missing_media": [{"id": r["id"], "reason": r.get("reason", "")} for r in missing],
    }
