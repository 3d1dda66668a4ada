"""``veripo score FILE --profile NAME`` on each predictions format, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.rewards.predictions import PredictionsError, load_predictions

DONE = "<think>t</think><answer>{}</answer>"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["score", *args])
    return result.exit_code, result.output


def test_videor1_eval_output(tmp_path: Path) -> None:
    rows = [{"problem_id": i, "problem_type": "multiple choice", "solution": "<answer>B</answer>",
             "options": ["A. x", "B. y"], "output": DONE.format(a)} for i, a in enumerate("BBBA")]  # fmt: skip
    rows.append({"problem_id": 9, "problem_type": "regression", "solution": "<answer>8</answer>", "output": DONE.format(8)})
    path = tmp_path / "eval_mmvu_out.json"
    path.write_text(json.dumps({"results": rows}))
    code, out = _run(str(path), "--profile", "videor1-eval", "--workers", "0")
    assert code == 0, out
    assert "multiple choice" in out and "75.00" in out and "regression" in out and "80.00" in out  # (3 + 1) / 5


def test_veripo_eval_output(tmp_path: Path) -> None:
    rows = [{"ground_truth": "D", "model_output": DONE.format(" $D$ "), "question": {"question_id": "1"}},
            {"ground_truth": "D", "model_output": DONE.format(" $A$ "), "question": {"question_id": "2"}}]  # fmt: skip
    path = tmp_path / "tomato.json"
    path.write_text(json.dumps(rows))
    code, out = _run(str(path), "--profile", "veripo-eval", "--workers", "0")
    assert code == 0, out
    assert "50.00" in out


def test_samples_with_completion_and_rollouts(tmp_path: Path) -> None:
    sample = {"id": "s1", "problem": "q", "problem_type": "numerical", "answer": "12"}
    (tmp_path / "scored.jsonl").write_text(json.dumps({**sample, "completion": DONE.format("12")}) + "\n")
    (tmp_path / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    (tmp_path / "rollouts.jsonl").write_text(
        json.dumps({"id": "s1/0/0", "sample_id": "s1", "group_index": 0, "text": DONE.format("13")}) + "\n"
    )
    pairs = load_predictions(tmp_path / "scored.jsonl")
    assert pairs[0][0] == DONE.format("12") and pairs[0][1].answer == "12"
    code, out = _run(str(tmp_path / "rollouts.jsonl"), "--samples", str(tmp_path / "samples.jsonl"), "--workers", "0")
    assert code == 0, out
    assert "numerical" in out and "0.00" in out
    with pytest.raises(PredictionsError, match="pass --samples FILE"):
        load_predictions(tmp_path / "rollouts.jsonl")


def test_errors_name_file_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"solution": "<answer>A</answer>", "output": "x"}]))
    code, out = _run(str(path), "--workers", "0")
    assert code == 2 and "record 0" in out and "'problem_type'" in out
    path.write_text(json.dumps([{"foo": 1}]))
    assert "unknown record shape" in _run(str(path))[1]
    path.write_text("{not json")
    assert "not valid JSON" in _run(str(path))[1]
    assert "file not found" in _run(str(tmp_path / "missing.json"))[1]
    code, out = _run(str(path), "--profile", "nope")
    assert code == 2 and "unknown scoring profile" in out
