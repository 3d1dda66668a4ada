"""``veripo compare`` (VerIPO vs GRPO-only side by side), the CLI commands, and the small pure helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.report import write_comparison
from veripo.report.plots import OVERLAYS, PLOTS
from veripo.report.run_data import load_run, read_jsonl
from veripo.report.style import moving_average
from veripo.report.tables import last_mean, run_table


def test_compare_two_runs(make_run, tmp_path: Path) -> None:
    veripo, grpo_only = make_run("veripo-run"), make_run("grpo-only-run", kind="grpo-only", seed=1)
    index = write_comparison([veripo, grpo_only], tmp_path / "cmp")
    assert index == tmp_path / "cmp" / "index.html"
    for spec in (*PLOTS, *OVERLAYS):
        assert (index.parent / f"{spec.name}.png").is_file(), spec.name
    with Image.open(index.parent / "accuracy_reward.png") as image:  # two panels side by side
        assert image.size[0] > 2.5 * image.size[1]  # one panel alone is 2:1
    page = index.read_text()
    assert "veripo-run vs grpo-only-run" in page
    assert "<td>veripo-run</td>" in page and "<td>grpo-only-run</td>" in page
    assert "53.0% (dpo-2)" in page and "49.0% (grpo-video)" in page  # final held-out accuracy per run
    assert page.count("<details>") == 2  # one config per run
    # the GRPO-only run has no pairs: its panel says so, the page still shows the plot
    assert "grpo-only-run: no verifier stage with pair counts" in page
    summary = (index.parent / "summary.md").read_text()
    assert "(overlay_heldout_accuracy.png)" in summary and "| veripo-run | 7 | 82 |" in summary


def test_compare_default_out_and_same_names(tmp_path: Path) -> None:
    run = tmp_path / "same-name"  # empty runs: this is about naming, not plots
    run.mkdir()
    index = write_comparison([run, run])
    assert index.parent == run.parent / "compare-same-name-vs-same-name"
    assert "same-name [1]" in index.read_text() and "same-name [2]" in index.read_text()


def test_cli_report_and_compare(tmp_path: Path) -> None:
    a, b = tmp_path / "a-run", tmp_path / "b-run"  # empty runs keep this fast; reports of full runs are tested above
    a.mkdir(), b.mkdir()
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(a)])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()) == a / "report" / "index.html"
    result = runner.invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert Path(result.output.strip()).is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output


def test_moving_average_by_hand() -> None:
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([4.0, 0.0, 2.0], 3) == [4.0, 2.0, 2.0]
    assert moving_average([], 3) == []


def test_last_mean_and_run_table(make_run) -> None:
    run = load_run(make_run())
    grpo = run.stages[1]
    _, accuracy = grpo.series("accuracy_mean")
    assert last_mean(grpo, "accuracy_mean") == pytest.approx(sum(accuracy[-3:]) / 3)  # 30 steps: last 3
    assert last_mean(run.stages[0], "accuracy_mean") is None
    row = run_table([run]).rows[0]
    # mean GRPO stage (300 s, 240 s) over mean DPO stage (20 s, 20 s): 13.5x
    assert row[-1] == "13.5x" and row[3] == "10.3 min" and row[8] == "39"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_read_jsonl_never_raises(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "metrics.jsonl"
    path.write_bytes(data)
    notes: list[str] = []
    rows = list(read_jsonl(path, notes))
    assert all(isinstance(r, dict) for r in rows)
    assert all(str(path) in n for n in notes)
