"""``veripo eval`` end to end on the tiny model: synthetic questions, the real benchmark question files whose
videos are absent, and real Video-R1 rows with their media (one deliberately missing)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.data.synthetic import make_synthetic

runner = CliRunner()


def _eval(model, out, *args, judge="none"):
    result = runner.invoke(app, ["eval", "--model", str(model), "--out", str(out), "--judge", judge,
                                 "--max-new-tokens", "12", "--batch-size", "4", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_synthetic_end_to_end(tiny_model_dir, tmp_path):
    data = make_synthetic(tmp_path / "heldout", n=6, seed=3, frames=(4, 6), size=56)
    out = tmp_path / "out"
    result = _eval(tiny_model_dir, out, "--bench", data, judge="rule")
    metrics = json.loads((out / "heldout" / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["n_missing_media"] == 0
    assert set(metrics["n_by_type"]) and sum(metrics["n_by_type"].values()) == 6
    assert 1 <= metrics["response_len"] <= 12
    assert metrics["media"]["fps"] == 2.0 and metrics["prompt"] == "veripo" and metrics["profile"] == "veripo-eval"
    assert metrics["judge"] == "rule"  # a random model's text states no conclusion: the labels are unknown
    assert json.loads((out / "metrics.json").read_text())["heldout"]["n"] == 6
    assert (out / "heldout" / "videor1_results.json").exists()
    assert (out / "heldout" / "heldout.veripo_predictions.json").exists()
    assert "heldout" in result.output and "accuracy" in result.output
    rows = [json.loads(line) for line in (out / "heldout" / "predictions.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 6 and all(r["status"] == "ok" and r["prompt_tokens"] > 0 for r in rows)
    # The same command again resumes: nothing is decoded twice.
    _eval(tiny_model_dir, out, "--bench", data, judge="rule")
    assert len((out / "heldout" / "predictions.jsonl").read_text().splitlines()) == 7  # header + 6


def test_real_question_files_with_missing_videos(tiny_model_dir, tmp_path, shared_data):
    questions = shared_data / "real" / "eval_questions"
    out = tmp_path / "out"
    result = _eval(tiny_model_dir, out, "--bench", questions / "eval_mmvu.json", "--bench",
                   questions / "veripo_tomato.json", "--limit", "3", "--prompt", "videor1")
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary) == {"eval_mmvu", "veripo_tomato"}
    for m in summary.values():
        assert (m["n"], m["n_missing_media"], m["n_total"]) == (0, 3, 3)
        assert all("not found" in item["reason"] for item in m["missing_media"])
        assert m["profile"] == "videor1-eval"
    assert [i["id"] for i in summary["eval_mmvu"]["missing_media"]] == ["eval_mmvu:1", "eval_mmvu:2", "eval_mmvu:3"]
    assert summary["veripo_tomato"]["media"]["fps"] == 4.0  # TOMATO's own frame rate
    assert "3 items with missing media" in result.output and "eval_mmvu:1" in result.output


def test_real_media_with_one_missing(tiny_model_dir, tmp_path, shared_data):
    rows = shared_data / "real" / "videor1_samples" / "sample_data.json"
    out = tmp_path / "out"
    _eval(tiny_model_dir, out, "--bench", rows, "--max-frames", "4", "--max-pixels", str(64 * 28 * 28))
    m = json.loads((out / "sample_data" / "metrics.json").read_text())
    assert (m["n"], m["n_missing_media"]) == (4, 1)
    assert "split_8.mp4" in m["missing_media"][0]["reason"]
    assert m["media"]["max_frames"] == 4
    present = [r for r in json.loads(rows.read_text()) if "split_8" not in json.dumps(r)]
    assert m["n_by_type"] == {t: sum(r["problem_type"] == t for r in present) for t in {r["problem_type"] for r in present}}


def test_bad_arguments_are_clear_errors(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["eval", "--model", str(tmp_path), "--bench", str(tmp_path / "x.json"),
                                 "--judge", "none"])
    assert result.exit_code == 2 and "config.json" in result.output
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--bench", str(tmp_path / "x.json"),
                                 "--prompt", "nope"])
    assert result.exit_code == 2 and "--prompt 'nope'" in result.output
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--bench", str(tmp_path / "x.json"),
                                 "--judge", "none", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "x.json: data file not found" in result.output
    result = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--bench", str(tmp_path / "x.json"),
                                 "--judge", "openai", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--judge-url" in result.output


def test_two_processes_write_what_one_writes(tiny_model_dir, tmp_path):
    """``torchrun -m veripo eval``: each of 2 gloo processes decodes a share (items i % 2), rank 0 writes
    every row once; with one question per call the rows equal a single process's."""
    import os
    import subprocess
    import sys

    data = make_synthetic(tmp_path / "heldout", n=5, seed=3, frames=(4, 4), size=56)
    args = ["--model", str(tiny_model_dir), "--bench", str(data), "--judge", "rule", "--max-new-tokens", "12",
            "--batch-size", "1"]
    result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "veripo",
           "eval", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("predictions and metrics in") == 1  # rank 0 alone reports

    def rows(out: str) -> dict[str, tuple]:
        lines = (tmp_path / out / "heldout" / "predictions.jsonl").read_text().splitlines()[1:]
        found = [json.loads(line) for line in lines]
        assert len(found) == len({r["id"] for r in found}) == 5, f"{out}: {[r['id'] for r in found]}"
        return {r["id"]: (r["status"], r["output"], r["consistency"], r["scores"]) for r in found}

    assert rows("two") == rows("one")
    one, two = (json.loads((tmp_path / out / "metrics.json").read_text())["heldout"] for out in ("one", "two"))
    assert two["n"] == one["n"] == 5 and two["accuracy"] == one["accuracy"]
