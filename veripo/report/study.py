"""A study's numbers (``veripo study``): per arm and stage the mean of each held-out metric over the seeds,
the per-seed values and a 95% bootstrap interval over seeds and items (``veripo.report.bootstrap``), plus the
paired differences that answer the study's questions, written as ``study.json``, ``study.csv``, ``study.md``,
``index.html`` and ``study_intervals.png``.

The values are per held-out item, read from each evaluated stage's ``eval/<benchmark>/predictions.jsonl``:
accuracy under the eval's scoring profile, inconsistency (1 when the judge found the answer contradicting
the thinking, 0 when consistent; unjudged items are left out) and response length in tokens. Every arm is
evaluated on the same held-out items, so differences are paired over seeds and items: between two stages
of one arm (the gain over the warm start, what a DPO stage changed) and between two arms' last stages.
A baseline that starts from VerIPO's warm start (``warm_start``) shows that stage first, read from the VerIPO
run of the same seed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from veripo.data.jsonl import read_jsonl
from veripo.report.bootstrap import (
    BOOT_SEED,
    LEVEL,
    N_BOOT,
    Interval,
    mean_interval,
    paired_difference,
    seed_means,
)
from veripo.report.pages import Page, render_html, render_markdown
from veripo.report.plots import RenderedPlot
from veripo.report.style import SERIES_COLORS, new_figure, save_figure
from veripo.report.tables import Table

METRICS = {  # name -> (label, digits, the better direction)
    "accuracy": ("held-out accuracy", 3, "higher"),
    "inconsistency_rate": ("inconsistency rate", 3, "lower"),
    "response_len": ("response length (tokens)", 1, "higher"),
}
Values = dict[str, dict[int, dict[str, float]]]  # metric -> seed -> item id -> value


@dataclass
class StudyStage:
    """One evaluated stage of an arm: its values per metric, seed and item."""

    arm: str
    name: str
    kind: str
    values: Values = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.arm} / {self.name}"


def item_values(eval_dir: Path) -> dict[str, dict[str, float]]:
    """metric -> item id -> value, from one benchmark's ``predictions.jsonl`` and ``metrics.json``."""
    profile = json.loads((eval_dir / "metrics.json").read_text())["profile"]
    out: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    for row in read_jsonl(eval_dir / "predictions.jsonl"):
        if row.get("status") != "ok":
            continue
        out["accuracy"][row["id"]] = float(row["scores"][profile]["accuracy"])
        out["response_len"][row["id"]] = float(row["response_tokens"])
        if row.get("consistency") in ("consistent", "inconsistent"):
            out["inconsistency_rate"][row["id"]] = float(row["consistency"] == "inconsistent")
    return out


def _evaluated_stages(run: Path) -> list[tuple[str, str, Path]]:
    """(name, kind, eval folder) of every stage of ``run`` with a held-out evaluation, in run order."""
    summary = json.loads((run / "summary.json").read_text())
    found = []
    for stage in summary["stages"]:
        evals = stage.get("eval") or {}
        if evals:
            bench = "heldout" if "heldout" in evals else next(iter(evals))
            found.append((stage["name"], stage["kind"],
                          run / "stages" / f"{stage['index']:02d}-{stage['name']}" / "eval" / bench))
    return found


def arm_stages(arm: str, runs: Mapping[int, Path], warm_start: Mapping[int, Path] | None = None) -> list[StudyStage]:
    """The evaluated stages of ``arm``'s runs (seed -> run directory), with the first evaluated stage of the
    ``warm_start`` runs (same seeds) in front; stages missing from a seed's run are left out."""
    per_seed: dict[int, list[tuple[str, str, Path]]] = {}
    for seed, run in runs.items():
        own = _evaluated_stages(run)
        if warm_start is not None:
            own = _evaluated_stages(warm_start[seed])[:1] + own
        per_seed[seed] = own
    first = next(iter(per_seed.values()), [])
    stages = []
    for name, kind, _ in first:
        stage = StudyStage(arm, name, kind, {m: {} for m in METRICS})
        for seed, found in per_seed.items():
            folder = next((f for n, _, f in found if n == name), None)
            if folder is None:
                break
            for metric, items in item_values(folder).items():
                stage.values[metric][seed] = items
        else:
            stages.append(stage)
    return stages


def aligned(stages: Sequence[StudyStage], metric: str) -> tuple[list[int], list[str], list[np.ndarray]]:
    """The seeds and items the ``stages`` share a ``metric`` value for, and each stage's (seeds, items) table.
    An item counts for a seed where every stage has a value for it in that seed (NaN elsewhere in that seed's
    row), so an inconsistency label one seed lacks does not drop the item for the other seeds; a seed that
    shares no item is left out."""
    common = [set(s.values[metric]) for s in stages]
    per_seed = {seed: set.intersection(*(set(s.values[metric][seed]) for s in stages))
                for seed in sorted(set.intersection(*common))}
    seeds = [seed for seed, found in per_seed.items() if found]
    items = sorted(set().union(*(per_seed[seed] for seed in seeds)))
    tables = [np.array([[s.values[metric][seed][i] if i in per_seed[seed] else np.nan for i in items]
                        for seed in seeds], dtype=float).reshape(len(seeds), len(items)) for s in stages]
    return seeds, items, tables


def _per_seed(seeds: Sequence[int], table: np.ndarray) -> dict[str, float]:
    return {str(seed): float(value) for seed, value in zip(seeds, seed_means(table))}


def _interval_json(interval: Interval, seeds, items, table) -> dict:
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n_seeds": len(seeds),
            "n_items": len(items), "per_seed": _per_seed(seeds, table)}


def cell(stage: StudyStage, metric: str, n_boot: int, boot_seed: int) -> dict | None:
    seeds, items, (table,) = aligned([stage], metric)
    if not items:
        return None
    return _interval_json(mean_interval(table, n_boot=n_boot, seed=boot_seed), seeds, items, table)


def difference(a: StudyStage, b: StudyStage, metric: str, what: str, n_boot: int, boot_seed: int) -> dict | None:
    """``a - b`` on ``metric``, paired over the seeds and items both have, with a sentence saying whether the
    interval excludes 0."""
    seeds, items, (ta, tb) = aligned([a, b], metric)
    if not items:
        return None
    interval = paired_difference(ta, tb, n_boot=n_boot, seed=boot_seed)
    label, digits, _ = METRICS[metric]
    per_seed = _per_seed(seeds, ta - tb)
    signs = [v > 0 for v in per_seed.values()], [v < 0 for v in per_seed.values()]
    verdict = ("significant: the 95% interval of the paired difference excludes 0" if interval.excludes_zero
               else "not significant: the 95% interval of the paired difference includes 0")
    sentence = (f"{what}, {label}: {a.label} minus {b.label} = {interval.mean:+.{digits}f} "
                f"[{interval.low:+.{digits}f}, {interval.high:+.{digits}f}], {verdict}; higher on {sum(signs[0])} "
                f"and lower on {sum(signs[1])} of {len(seeds)} seed(s)")
    return {"what": what, "metric": metric, "a": a.label, "b": b.label, **_interval_json(interval, seeds, items, ta - tb),
            "significant": interval.excludes_zero, "sentence": sentence}


def differences(arms: Mapping[str, list[StudyStage]], reference: str, n_boot: int, boot_seed: int) -> list[dict]:
    """Per arm: last stage minus warm start and each DPO stage minus the stage before it; per other arm: the
    reference arm's last stage minus its last stage."""
    found = []

    def add(a, b, metric, what):
        if (d := difference(a, b, metric, what, n_boot, boot_seed)) is not None:
            found.append(d)

    for arm, stages in arms.items():
        if len(stages) > 1:
            for metric in METRICS:
                add(stages[-1], stages[0], metric, f"{arm}: gain of the last stage over the warm start")
        for before, after in zip(stages, stages[1:]):
            if after.kind == "dpo":
                for metric in ("inconsistency_rate", "accuracy"):
                    add(after, before, metric, f"{arm}: what DPO stage {after.name} changed")
    if reference in arms:
        for arm, stages in arms.items():
            if arm != reference and stages:
                for metric in METRICS:
                    add(arms[reference][-1], stages[-1], metric, f"{reference} vs {arm}: last stages")
    return found


def _fmt(entry: dict | None, digits: int) -> str:
    if entry is None:
        return "–"
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _plot(arms: Mapping[str, list[StudyStage]], cells: Mapping[tuple[str, str, str], dict | None],
          out_dir: Path) -> RenderedPlot:
    title = "Held-out metrics after each stage: mean over seeds, 95% bootstrap interval over seeds and items"
    fig = new_figure(6.0 * len(METRICS), 5.0)
    axes = fig.subplots(1, len(METRICS), squeeze=False)[0]
    width = 0.8 / max(1, len(arms))
    for ax, (metric, (label, _, better)) in zip(axes, METRICS.items()):
        for j, (arm, stages) in enumerate(arms.items()):
            points = [(k, c) for k, s in enumerate(stages) if (c := cells[(arm, s.name, metric)]) is not None]
            if not points:
                continue
            xs = [k - 0.4 + width * (j + 0.5) for k, _ in points]
            ys = [c["mean"] for _, c in points]
            err = [[c["mean"] - c["low"] for _, c in points], [c["high"] - c["mean"] for _, c in points]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, color=SERIES_COLORS[j % len(SERIES_COLORS)], label=arm)
            for x, (_, c) in zip(xs, points):
                ax.scatter([x] * len(c["per_seed"]), list(c["per_seed"].values()), s=6, alpha=0.35,
                           color=SERIES_COLORS[j % len(SERIES_COLORS)])
        longest = max(arms.values(), key=len)
        ax.set_xticks(range(len(longest)), [s.name for s in longest], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(f"stage (of {max(arms, key=lambda a: len(arms[a]))}; other arms: their k-th stage)")
        ax.set_ylabel(f"{label} ({better} is better)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a metric no stage has (no judged items) draws nothing
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return RenderedPlot("study_intervals", title, save_figure(fig, out_dir / "study_intervals.png"),
                        "small dots: the per-seed means")


def write_study(out_dir: Path, arms: Mapping[str, list[StudyStage]], *, descriptions: Mapping[str, str],
                reference: str, meta: Sequence[str] = (), n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED) -> Path:
    """Write the study's files to ``out_dir``; returns the path of ``study.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = {(arm, s.name, m): cell(s, m, n_boot, boot_seed) for arm, stages in arms.items() for s in stages for m in METRICS}
    diffs = differences(arms, reference, n_boot, boot_seed)
    data = {
        "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": LEVEL, "method": "percentile interval; seeds and "
                      "items resampled with replacement; differences paired over the seeds and items both sides have"},
        "arms": {arm: {"description": descriptions.get(arm, ""), "stages": [
            {"stage": s.name, "kind": s.kind, "metrics": {m: cells[(arm, s.name, m)] for m in METRICS}}
            for s in stages]} for arm, stages in arms.items()},
        "differences": diffs,
    }
    (out_dir / "study.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    seeds = sorted({int(k) for c in cells.values() if c for k in c["per_seed"]})
    with open(out_dir / "study.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "stage", "kind", "metric", "mean", "low", "high", "n_seeds", "n_items",
                         *[f"seed_{s}" for s in seeds]])
        for arm, stages in arms.items():
            for s in stages:
                for m in METRICS:
                    if (c := cells[(arm, s.name, m)]) is not None:
                        writer.writerow([arm, s.name, s.kind, m, c["mean"], c["low"], c["high"], c["n_seeds"],
                                         c["n_items"], *[c["per_seed"].get(str(k), "") for k in seeds]])
    headers = ["arm", "stage", "kind", *[f"{label}, mean [95% CI]" for label, _, _ in METRICS.values()], "seeds"]
    rows = [[arm, s.name, s.kind, *[_fmt(cells[(arm, s.name, m)], METRICS[m][1]) for m in METRICS],
             str(max((c["n_seeds"] for m in METRICS if (c := cells[(arm, s.name, m)])), default=0))]
            for arm, stages in arms.items() for s in stages]
    last = Table("Last stage of each arm, side by side (mean [95% CI])", ["metric", *arms],
                 [[label, *[_fmt(cells[(arm, stages[-1].name, m)], digits) if stages else "–"
                            for arm, stages in arms.items()]] for m, (label, digits, _) in METRICS.items()])
    diff_rows = [[d["what"], METRICS[d["metric"]][0], _fmt(d, METRICS[d["metric"]][1]),
                  "yes" if d["significant"] else "no", ", ".join(f"{v:+.3f}" for v in d["per_seed"].values()),
                  d["sentence"]] for d in diffs]
    page = Page(
        title="VerIPO study: " + ", ".join(arms),
        meta=[*meta, *[f"{arm}: {descriptions[arm]}" for arm in arms if arm in descriptions],
              f"intervals: 95% percentile bootstrap ({n_boot} replicates, seed {boot_seed}) over seeds and held-out "
              f"items; differences paired over the seeds and items both sides have"],
        tables=[last, Table("Every arm and stage (mean over seeds [95% CI])", headers, rows),
                Table("Paired differences (a minus b; significant: the 95% interval excludes 0)",
                      ["comparison", "metric", "difference [95% CI]", "significant", "per seed", "in words"], diff_rows)],
        plots=[_plot(arms, cells, out_dir)] if any(cells.values()) else [],
        wide=True,
    )
    (out_dir / "index.html").write_text(render_html(page), encoding="utf-8")
    path = out_dir / "study.md"
    path.write_text(render_markdown(page), encoding="utf-8")
    return path
