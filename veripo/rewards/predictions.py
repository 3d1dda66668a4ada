"""Read predictions files to score: Video-R1 eval output, VerIPO eval output, or our own JSONL.

| format        | shape                                                                             |
|---------------|-----------------------------------------------------------------------------------|
| videor1-eval  | ``{"results": [{problem_type, solution, output, options, problem_id, ...}]}`` (or a bare list) |
| veripo-eval   | ``[{"ground_truth", "model_output", "question": {...}}]``                          |
| jsonl         | one object a line: Sample fields + ``completion``; or Rollout records (``sample_id``, ``text``) with ``--samples`` |

Errors name the file, the record and the field, and say what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veripo.data.records import Rollout, Sample
from veripo.errors import UserError
from veripo.rewards.golden import inner_answer


class PredictionsError(UserError, ValueError):
    """A predictions file that cannot be read; the message says where and why."""


def load_predictions(path: str | Path, samples_path: str | Path | None = None) -> list[tuple[str, Sample]]:
    """(completion, sample) pairs from any supported predictions file (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: file not found")
    if path.is_dir():
        raise PredictionsError(f"{path}: is a folder; pass a predictions file")
    text = _read_text(path)
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped.startswith("{") and "\n{" in stripped and not _is_json(stripped)):
        rows = _jsonl_rows(path, text)
    else:
        try:
            data = json.loads(text)
        except RecursionError:
            raise PredictionsError(f"{path}: JSON nested too deeply to read") from None
        except json.JSONDecodeError as e:
            raise PredictionsError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); expected a JSON or JSONL file") from None
        rows = data.get("results") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise PredictionsError(f"{path}: expected a list of records or {{'results': [...]}}, got {type(data).__name__}")
    out = []
    samples = _samples_by_id(Path(samples_path)) if samples_path else {}
    for index, row in enumerate(rows):
        where = f"{path}: record {index}"
        if not isinstance(row, dict):
            raise PredictionsError(f"{where}: expected an object, got {type(row).__name__}")
        try:
            out.append(_pair(row, where, path, samples))
        except TypeError as e:  # a field of the wrong type (veripo.data.records.RecordFieldError)
            raise PredictionsError(f"{where}: {e}") from None
    return out


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PredictionsError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start}); re-encode the file "
                               "as UTF-8") from None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _jsonl_rows(path: Path, text: str) -> list[Any]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except RecursionError:
            raise PredictionsError(f"{path}: line {line_no}: JSON nested too deeply to read") from None
        except json.JSONDecodeError as e:
            raise PredictionsError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from None
    return rows


def _samples_by_id(path: Path) -> dict[str, Sample]:
    samples = {}
    for index, row in enumerate(_jsonl_rows(path, _read_text(path))):
        if not isinstance(row, dict) or "id" not in row:
            raise PredictionsError(f"{path}: record {index}: expected a Sample object with field 'id'")
        try:
            samples[str(row["id"])] = Sample.from_dict(row)
        except TypeError as e:
            raise PredictionsError(f"{path}: record {index}: {e}") from None
    return samples


def _field(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row:
        raise PredictionsError(f"{where}: missing field {name!r} (has: {', '.join(sorted(row)) or 'nothing'})")
    return row[name]


def _pair(row: dict[str, Any], where: str, path: Path, samples: dict[str, Sample]) -> tuple[str, Sample]:
    if "model_output" in row and "ground_truth" in row:  # VerIPO eval output
        gold = str(row["ground_truth"])
        question = row.get("question") if isinstance(row.get("question"), dict) else {}
        kind = question.get("problem_type") or (
            "multiple choice" if gold.isalpha() and gold.isupper()
            else "regression" if "vsi" in path.name.lower() else "math"
        )  # fmt: skip
        sample_id = str(question.get("question_id", where))
        return str(row["model_output"]), Sample(id=sample_id, problem="", problem_type=kind, answer=gold)
    if "solution" in row and ("output" in row or "completion" in row):  # Video-R1 eval output
        completion = row.get("output", row.get("completion"))
        return str(completion), Sample(
            id=str(row.get("problem_id", where)),
            problem=str(row.get("problem", "")),
            problem_type=str(_field(row, "problem_type", where)),
            answer=inner_answer(str(row["solution"])),
            options=list(row.get("options") or []),
        )
    if "completion" in row:  # Sample fields + completion
        for name in ("id", "problem_type", "answer"):
            _field(row, name, where)
        return str(row["completion"]), Sample.from_dict({"problem": "", **row})
    if "sample_id" in row and "text" in row:  # our rollouts
        rollout = Rollout.from_dict(row)
        if rollout.sample_id not in samples:
            hint = "pass --samples FILE with the samples" if not samples else "not in the samples file"
            raise PredictionsError(f"{where}: rollout's sample_id {rollout.sample_id!r}: {hint}")
        return rollout.text, samples[rollout.sample_id]
    raise PredictionsError(
        f"{where}: unknown record shape (fields: {', '.join(sorted(row))}); expected VerIPO eval output "
        "(ground_truth, model_output), Video-R1 eval output (solution, output), a Sample with 'completion', "
        "or a rollout (sample_id, text) with --samples"
    )
