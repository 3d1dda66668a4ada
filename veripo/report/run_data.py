"""Read a run directory (docs/run-directory.md) for reporting, tolerantly.

A report is most wanted when a run went wrong, so nothing here raises on a missing, empty, torn or
malformed file: what cannot be read becomes a note (naming the file, the line and what was expected) that
the report shows, and the rest of the run is still reported. Large files (``rollouts.jsonl``,
``verdicts.jsonl``) are never read; ``pairs.jsonl`` is streamed only when no pair counts were written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.data.jsonl import HEADER_KEY

STAGE_DIR = re.compile(r"^(\d+)-(.+)$")
# a GRPO stage's question-stream counters in summary.json (veripo.recipes.grpo.GRPOStage.numbers)
SAMPLING_COUNTS = ("questions_drawn", "questions_resampled", "resample_rounds", "groups_dropped")


@dataclass
class StageData:
    """Everything the report knows about one stage. ``eval`` maps benchmark -> metrics (``heldout`` first)."""

    index: int
    name: str
    kind: str = "unknown"
    folder: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows with a usable x
    wall_time_s: float | None = None
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # verify stages: pairs per type
    verify: dict[str, Any] = field(default_factory=dict)  # verify_summary.json as written
    inconsistency_rate: float | None = None  # verify stages: share of judged rollouts found inconsistent
    sampling: dict[str, float] = field(default_factory=dict)  # GRPO stages: questions drawn, resampled, ...

    @property
    def label(self) -> str:
        return f"{self.index:02d} {self.name}"

    @property
    def primary_eval(self) -> dict[str, Any]:
        """The held-out metrics after this stage, or the first benchmark's when there is no held-out set."""
        return self.eval.get("heldout") or next(iter(self.eval.values()), {})

    @property
    def step_span(self) -> tuple[float, float] | None:
        """(first, last) global step of this stage's rows, or None when it logged no steps."""
        xs = [r["global_step"] for r in self.rows]
        return (min(xs), max(xs)) if xs else None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(global_steps, values) of the rows that carry a finite number under ``key``."""
        xs, ys = [], []
        for row in self.rows:
            value = as_number(row.get(key))
            if value is not None:
                xs.append(row["global_step"])
                ys.append(value)
        return xs, ys


@dataclass
class RunData:
    name: str
    root: Path
    stages: list[StageData] = field(default_factory=list)
    config_text: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be read, for the report's "Notes"

    @property
    def benchmarks(self) -> list[str]:
        """Benchmarks evaluated in any stage, ``heldout`` first, then in order of appearance."""
        seen: dict[str, None] = {}
        for stage in self.stages:
            for bench in stage.eval:
                seen.setdefault(bench, None)
        return sorted(seen, key=lambda b: (b != "heldout",))

    @property
    def steps_logged(self) -> int:
        return sum(len(s.rows) for s in self.stages)

    def stage_end_step(self, stage: StageData) -> float:
        """Where a stage ends on the global-step axis; stages without steps sit at the previous stage's end."""
        end = 0.0
        for other in self.stages:
            span = other.step_span
            if span is not None:
                end = span[1]
            if other is stage:
                break
        return end


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN, inf, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_jsonl(path: Path, notes: list[str]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of ``path``; bad lines become notes (a torn last line is expected after a kill)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        notes.append(f"{path}: cannot be read ({e.strerror}); skipped")
        return
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            what = "the last line is incomplete (interrupted write?)" if i == last else f"not valid JSON ({e.msg})"
            notes.append(f"{path}: line {i + 1}: {what}; skipped")
            continue
        if isinstance(row, dict):
            if HEADER_KEY not in row:  # the JsonlWriter's header line, not a record
                yield row
        else:
            notes.append(f"{path}: line {i + 1}: expected a JSON object, got {type(row).__name__}; skipped")


def read_json_object(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None (absent files silently, bad ones with a note)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        notes.append(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); skipped")
        return None
    except OSError as e:
        notes.append(f"{path}: cannot be read ({e.strerror}); skipped")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: expected a JSON object, got {type(data).__name__}; skipped")
        return None
    return data


def _metrics_rows(path: Path, notes: list[str], step_offset: float) -> list[dict[str, Any]]:
    """Rows with a numeric ``global_step``; rows that only have ``step`` are placed after ``step_offset``."""
    rows, missing = [], 0
    for row in read_jsonl(path, notes):
        x = as_number(row.get("global_step"))
        if x is None and as_number(row.get("step")) is not None:
            x = step_offset + as_number(row["step"])
        if x is None:
            missing += 1
            continue
        rows.append({**row, "global_step": x})
    if missing:
        notes.append(f"{path}: {missing} row(s) without a numeric 'global_step' or 'step'; skipped")
    # a step logged twice (a resume that re-ran it) counts once: the later row is the one training kept
    latest = {row["global_step"]: row for row in rows}
    if len(latest) < len(rows):
        notes.append(f"{path}: {len(rows) - len(latest)} repeated step(s); the last row of each step is used")
    return sorted(latest.values(), key=lambda r: r["global_step"])


def _pair_counts(data: Any) -> dict[str, int]:
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if as_number(v) is not None and not isinstance(v, bool)}


def _count_pair_types(path: Path, notes: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_jsonl(path, notes):
        kind = str(row.get("pair_type", "unknown"))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _eval_metrics(folder: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """``eval/metrics.json`` (benchmark -> metrics, or one flat metrics object = held-out) and
    ``eval/<benchmark>/metrics.json``."""
    out: dict[str, dict[str, Any]] = {}
    top = read_json_object(folder / "metrics.json", notes)
    if top is not None:
        flat = "accuracy" in top or not any(isinstance(v, dict) for v in top.values())
        if flat:  # one benchmark's metrics (nested dicts such as by_type belong to it)
            out["heldout"] = top
        else:
            out.update({k: v for k, v in top.items() if isinstance(v, dict)})
    for sub in sorted(p for p in folder.glob("*/metrics.json")):
        data = read_json_object(sub, notes)
        if data is not None:
            out.setdefault(sub.parent.name, data)
    return out


def _guess_kind(name: str) -> str:
    low = name.lower()
    for hint, kind in (("verif", "verify"), ("dpo", "dpo"), ("grpo", "grpo"), ("sft", "sft"), ("eval", "eval")):
        if hint in low:
            return kind
    return "unknown"


def _config_kinds(config_text: str | None) -> dict[str, str]:
    """Stage name -> kind from config.yaml's ``stages`` and ``loop`` lists."""
    if not config_text:
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return {}
    kinds: dict[str, str] = {}
    if isinstance(cfg, dict):
        for key in ("stages", "loop"):
            for stage in cfg.get(key) or []:
                if isinstance(stage, dict) and "name" in stage and "kind" in stage:
                    kinds[str(stage["name"])] = str(stage["kind"])
    return kinds


def load_run(run_dir: str | Path) -> RunData:
    """Read everything the report shows from ``run_dir``. Never raises for content problems."""
    root = Path(run_dir)
    run = RunData(name=root.resolve().name, root=root)
    notes = run.notes
    config_path = root / "config.yaml"
    try:
        run.config_text = config_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        notes.append(f"{config_path}: {e.strerror or 'cannot be read'}; the report shows no config")
    run.state = read_json_object(root / "state.json", notes) or {}
    summary = read_json_object(root / "summary.json", notes)
    if summary is None:
        notes.append(f"{root / 'summary.json'}: not found or unreadable; per-stage numbers come from the stage folders")
        summary = {}
    run.name = str(summary.get("run") or run.name)
    entries = [s for s in summary.get("stages") or [] if isinstance(s, dict) and as_number(s.get("index")) is not None]

    stages: dict[int, StageData] = {}
    stages_root = root / "stages"
    for folder in sorted(stages_root.iterdir()) if stages_root.is_dir() else []:
        match = STAGE_DIR.match(folder.name)
        if folder.is_dir() and match:
            stages[int(match.group(1))] = StageData(index=int(match.group(1)), name=match.group(2), folder=folder)
    for entry in entries:
        index = int(entry["index"])
        stage = stages.setdefault(index, StageData(index=index, name=str(entry.get("name") or f"stage-{index}")))
        stage.name = str(entry.get("name") or stage.name)
        stage.kind = str(entry.get("kind") or stage.kind)
        stage.wall_time_s = as_number(entry.get("wall_time_s"))
        evals = entry.get("eval")
        stage.eval = {str(k): v for k, v in evals.items() if isinstance(v, dict)} if isinstance(evals, dict) else {}
        stage.pairs = _pair_counts(entry.get("pairs"))
        stage.inconsistency_rate = as_number(entry.get("inconsistency_rate"))
        stage.sampling = {key: value for key in SAMPLING_COUNTS if (value := as_number(entry.get(key))) is not None}
    if not stages:
        notes.append(f"{root}: no stages found (neither stages/NN-<name>/ folders nor summary.json entries)")

    config_kinds = _config_kinds(run.config_text)
    offset = 0.0
    for stage in sorted(stages.values(), key=lambda s: s.index):
        _read_stage_folder(stage, notes, offset)
        if stage.kind == "unknown":
            stage.kind = config_kinds.get(stage.name) or _guess_kind(stage.name)
        span = stage.step_span
        offset = span[1] if span else offset
        for bench, metrics_of in stage.eval.items():
            missing = as_number(metrics_of.get("n_missing_media"))
            if missing:
                notes.append(f"stage {stage.name}, eval {bench}: {int(missing)} item(s) with missing media not evaluated")
        run.stages.append(stage)
    return run


def _read_stage_folder(stage: StageData, notes: list[str], step_offset: float) -> None:
    """Fill what summary.json did not give from the stage's own files."""
    folder = stage.folder
    if folder is None:
        return
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        stage.rows = _metrics_rows(metrics, notes, step_offset)
        if stage.kind == "unknown":
            kinds = {str(r.get("kind")) for r in stage.rows if r.get("kind")}
            stage.kind = kinds.pop() if len(kinds) == 1 else stage.kind
        if stage.wall_time_s is None:
            times = [t for t in (as_number(r.get("time_s")) for r in stage.rows) if t is not None]
            stage.wall_time_s = max(times) if times else None
    verify = read_json_object(folder / "verify_summary.json", notes)
    if verify is not None:
        stage.verify = verify
        stage.kind = "verify" if stage.kind == "unknown" else stage.kind
        if not stage.pairs:
            stage.pairs = _pair_counts(verify.get("pairs") or verify.get("pairs_per_type"))
        if stage.inconsistency_rate is None:
            stage.inconsistency_rate = as_number(verify.get("inconsistency_rate"))
    if not stage.pairs and (folder / "pairs.jsonl").is_file():
        stage.pairs = _count_pair_types(folder / "pairs.jsonl", notes)
        stage.kind = "verify" if stage.kind == "unknown" else stage.kind
    if (folder / "eval").is_dir():
        for bench, metrics_of in _eval_metrics(folder / "eval", notes).items():
            stage.eval.setdefault(bench, metrics_of)
