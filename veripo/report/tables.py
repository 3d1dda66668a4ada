"""The report's key numbers as plain tables (headers, rows of strings), rendered by both the HTML page and
the Markdown summary, so the two always show the same figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veripo.report.plots import PAIR_TYPES
from veripo.report.run_data import RunData, StageData, as_number
from veripo.report.style import KIND_TITLES, format_duration

MISSING = "–"


@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


def percent(value: Any) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{100 * number:.1f}%"


def number(value: Any, digits: int = 1) -> str:
    value = as_number(value)
    return MISSING if value is None else f"{value:.{digits}f}"


def duration(value: float | None) -> str:
    return MISSING if value is None else format_duration(value)


def last_mean(stage: StageData, key: str) -> float | None:
    """Mean of ``key`` over the last 10% of the stage's steps (at least one): where training ended up."""
    _, ys = stage.series(key)
    if not ys:
        return None
    tail = ys[-max(1, len(ys) // 10):]
    return sum(tail) / len(tail)


def stage_table(run: RunData) -> Table:
    headers = ["#", "stage", "kind", "steps", "wall time", "held-out accuracy", "response length (tokens)",
               "thinking length (tokens)", "inconsistency rate", "train accuracy reward (last 10% of steps)",
               "pairs"]
    rows = []
    for s in run.stages:
        ev = s.primary_eval
        inconsistency = ev.get("inconsistency_rate", s.inconsistency_rate)
        rows.append([
            str(s.index), s.name, KIND_TITLES.get(s.kind, s.kind), str(len(s.rows)) if s.rows else MISSING,
            duration(s.wall_time_s), percent(ev.get("accuracy")), number(ev.get("response_len")),
            number(ev.get("thinking_len")), percent(inconsistency), number(last_mean(s, "accuracy_mean"), 3),
            str(sum(s.pairs.values())) if s.pairs else MISSING,
        ])
    return Table("Key numbers per stage (eval on the held-out set after the stage)", headers, rows)


def benchmark_table(run: RunData) -> Table:
    benches = run.benchmarks
    rows = [[s.name, KIND_TITLES.get(s.kind, s.kind)] + [percent(s.eval.get(b, {}).get("accuracy")) for b in benches]
            for s in run.stages if s.eval]
    return Table("Eval accuracy per benchmark after each stage", ["stage", "kind"] + benches, rows)


def _grouped_accuracy_table(run: RunData, key: str, what: str) -> Table:
    """Held-out accuracy per group (the eval's ``key`` dict: ``by_type`` or ``by_task``) after each stage."""
    by_stage = {s.name: s.primary_eval.get(key) for s in run.stages}
    by_stage = {name: groups for name, groups in by_stage.items() if isinstance(groups, dict) and groups}
    groups = list(dict.fromkeys(t for per_group in by_stage.values() for t in per_group))
    rows = [[name] + [percent(per_group.get(t)) for t in groups] for name, per_group in by_stage.items()]
    return Table(f"Held-out accuracy per {what} after each stage", ["stage"] + groups, rows)


def problem_type_table(run: RunData) -> Table:
    """Held-out accuracy per problem type after each stage."""
    return _grouped_accuracy_table(run, "by_type", "problem type")


def task_table(run: RunData) -> Table | None:
    """Held-out accuracy per task after each stage, when the held-out items name their tasks."""
    table = _grouped_accuracy_table(run, "by_task", "task")
    return table if table.rows else None


def sampling_table(run: RunData) -> Table | None:
    """The GRPO stages' question counts when dynamic sampling (DAPO) resampled: questions drawn from the
    data, how many of them were resampled, in how many extra rounds, and the equal-reward groups dropped."""
    stages = [s for s in run.stages if s.sampling.get("questions_resampled") or s.sampling.get("resample_rounds")]
    if not stages:
        return None
    keys = ("questions_drawn", "questions_resampled", "resample_rounds", "groups_dropped")
    rows = [[s.name] + [number(s.sampling.get(k), 0) for k in keys] for s in stages]
    headers = ["GRPO stage", "questions drawn", "resampled questions", "resample rounds", "groups dropped"]
    return Table("Dynamic sampling (DAPO): questions drawn to fill the rollout batches", headers, rows)


def _failed_checks(stage: StageData) -> str:
    checks = stage.verify.get("failed_checks") or stage.verify.get("checks_failed") or stage.verify.get("failed")
    if not isinstance(checks, dict):
        return MISSING
    return ", ".join(f"{k} {int(v)}" for k, v in checks.items() if as_number(v) is not None) or MISSING


def pairs_table(run: RunData) -> Table:
    stages = [s for s in run.stages if s.pairs or s.kind == "verify"]
    types = list(PAIR_TYPES) + sorted({t for s in stages for t in s.pairs} - set(PAIR_TYPES))
    rows = [[s.name] + [str(s.pairs.get(t, 0)) for t in types] + [str(sum(s.pairs.values())),
            percent(s.inconsistency_rate), _failed_checks(s)] for s in stages]
    headers = ["verifier stage"] + types + ["total", "inconsistent rollouts", "rollouts failing each check"]
    return Table("Preference pairs per type", headers, rows)


def _final(run: RunData, metric: str) -> tuple[float | None, str]:
    """The held-out ``metric`` after the last stage that has one, and that stage's name."""
    for stage in reversed(run.stages):
        value = as_number(stage.primary_eval.get(metric))
        if value is not None:
            return value, stage.name
    return None, MISSING


def grpo_dpo_speed(run: RunData) -> str:
    """Mean GRPO stage wall time over mean DPO stage wall time (the paper reports DPO about 7x faster)."""
    times = {k: [s.wall_time_s for s in run.stages if s.kind == k and s.wall_time_s] for k in ("grpo", "dpo")}
    if not times["grpo"] or not times["dpo"]:
        return MISSING
    ratio = (sum(times["grpo"]) / len(times["grpo"])) / (sum(times["dpo"]) / len(times["dpo"]))
    return f"{ratio:.1f}x"


def run_table(runs: Sequence[RunData]) -> Table:
    headers = ["run", "stages", "steps", "total wall time", "final held-out accuracy", "best held-out accuracy",
               "final inconsistency rate", "final response length (tokens)", "pairs", "GRPO/DPO stage time"]
    rows = []
    for run in runs:
        accuracies = [(as_number(s.primary_eval.get("accuracy")), s.name) for s in run.stages]
        accuracies = [(a, n) for a, n in accuracies if a is not None]
        best = max(accuracies, default=None, key=lambda a: a[0])
        final_acc, final_stage = _final(run, "accuracy")
        walls = [s.wall_time_s for s in run.stages if s.wall_time_s is not None]
        rows.append([
            run.name, str(len(run.stages)), str(run.steps_logged), duration(sum(walls) if walls else None),
            f"{percent(final_acc)} ({final_stage})" if final_acc is not None else MISSING,
            f"{percent(best[0])} ({best[1]})" if best else MISSING,
            percent(_final(run, "inconsistency_rate")[0]),
            number(_final(run, "response_len")[0]),
            str(sum(sum(s.pairs.values()) for s in run.stages)), grpo_dpo_speed(run),
        ])
    return Table("Key numbers per run", headers, rows)
