"""``veripo data make-synthetic`` and ``veripo data inspect``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from veripo.cli.main import app


def test_make_synthetic_then_inspect(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "syn"
    made = runner.invoke(app, ["data", "make-synthetic", str(out), "--n", "9", "--seed", "5"])
    assert made.exit_code == 0, made.output
    assert (out / "dataset.json").is_file() and len(list((out / "media").iterdir())) == 6
    shown = runner.invoke(app, ["data", "inspect", str(out), "--examples", "2"])
    assert shown.exit_code == 0, shown.output
    assert "9 samples" in shown.output and "multiple choice" in shown.output and "gold:" in shown.output


def test_make_synthetic_with_tasks_and_brief_chains(tmp_path: Path) -> None:
    import json

    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "brief"
    made = runner.invoke(app, ["data", "make-synthetic", str(out), "--n", "4", "--kinds", "video",
                               "--tasks", "colour_change,count", "--chain", "brief"])
    assert made.exit_code == 0, made.output
    rows = json.loads((out / "dataset.json").read_text())
    assert {r["task"] for r in rows} == {"colour_change", "count"}
    assert all("Frame" not in r["process"] and "row" not in r["process"] for r in rows)
    refused = runner.invoke(app, ["data", "make-synthetic", str(tmp_path / "x"), "--n", "1", "--chain", "long"])
    assert refused.exit_code == 2 and "unknown chain style" in refused.output


def test_inspect_lists_missing_media_and_reports_bad_files(tmp_path: Path, shared_data: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    shown = runner.invoke(app, ["data", "inspect", str(shared_data / "real/videor1_samples/sample_data.json")])
    assert shown.exit_code == 0 and "split_8.mp4" in shown.output and "1 with missing media" in shown.output
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    failed = runner.invoke(app, ["data", "inspect", str(bad)])
    assert failed.exit_code == 2 and "bad.json:1" in failed.output
