"""The report of a run directory: files, images, HTML/Markdown content, tolerance to missing or torn files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from synthetic_runs import VERIPO_STAGES, build_run
from PIL import Image

from veripo.report import load_run, write_report
from veripo.report.plots import PLOTS

PLOT_NAMES = [spec.name for spec in PLOTS]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = build_run(tmp_path_factory.mktemp("runs") / "veripo-20261123-210000", VERIPO_STAGES)
    return write_report(run)


def test_load_run_reads_every_stage(make_run) -> None:
    run = load_run(make_run())
    assert [s.kind for s in run.stages] == ["sft", "grpo", "verify", "dpo", "grpo", "verify", "dpo"]
    grpo = run.stages[1]
    assert len(grpo.rows) == 30 and grpo.step_span == (13, 42)
    assert grpo.wall_time_s == 300.0 and grpo.primary_eval["accuracy"] == pytest.approx(0.41)
    assert run.stages[2].pairs == {"consistency": 7, "penalty": 9, "reflective": 2}
    assert run.stages[2].verify["failed_checks"] == {"format": 3, "repetition": 1}
    assert run.benchmarks == ["heldout", "tomato"]
    # a step-less stage sits at the end of the stage before it on the global-step axis
    assert run.stage_end_step(run.stages[2]) == 42
    assert run.notes == []


def test_report_writes_every_plot_as_a_real_png(report: Path) -> None:
    assert report.name == "index.html" and (report.parent / "summary.md").is_file()
    for name in PLOT_NAMES:
        with Image.open(report.parent / f"{name}.png") as image:
            image.verify()
        with Image.open(report.parent / f"{name}.png") as image:
            width, height = image.size
            assert 900 <= width <= 2000 and 400 <= height <= 1000, (name, image.size)
            # a drawn plot, not an empty canvas: many distinct colours
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50, name


def test_html_is_self_contained_and_shows_plots_numbers_and_config(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    for name in PLOT_NAMES:
        assert f'data-file="{name}.png"' in page and f'id="plot-{name}"' in page
    assert page.count("data:image/png;base64,") == len(PLOT_NAMES)
    assert not re.search(r"<script|<link|https?://", page)
    # key numbers of the synthetic run (see conftest.build_run): held-out accuracy after dpo-2, its
    # inconsistency rate, the verifier's pairs, a GRPO stage's wall time
    for number in ("53.0%", "5.6%", "<td>21</td>", "5.0 min", "<td>dpo-2</td>"):
        assert number in page, number
    assert "<details><summary>config.yaml of veripo-20261123-210000</summary>" in page
    assert "kind: verify" in page


def test_markdown_summary_references_plots_and_numbers(report: Path) -> None:
    summary = (report.parent / "summary.md").read_text(encoding="utf-8")
    for name in PLOT_NAMES:
        assert f"({name}.png)" in summary
    assert "| 6 | dpo-2 | DPO | 8 | 20.0 s | 53.0% | 160.0 | 118.0 | 5.6% |" in summary
    assert "| verify-2 | 10 | 9 | 2 | 21 |" in summary
    assert "| stage | multiple choice | numerical |" in summary and "| dpo-2 | 58.0% | 48.0% |" in summary
    assert "Held-out accuracy per task" in summary
    assert "| stage | colour_change | count |" in summary and "| dpo-2 | 63.0% | 43.0% |" in summary
    assert "```yaml" in summary


def test_torn_last_line_and_bad_values_are_notes_not_crashes(make_run) -> None:
    root = make_run()
    metrics = root / "stages" / "01-grpo-activation" / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    rows[3] = json.dumps({**json.loads(rows[3]), "accuracy_mean": float("nan"), "response_len": "long"})
    repeated = json.dumps({**json.loads(rows[-1]), "accuracy_mean": 0.123})  # a resume re-ran the last step
    metrics.write_text("\n".join(rows) + f"\n[1, 2]\n{repeated}\n" + '{"stage": "grpo-activation", "step": 31, "glo')
    run = load_run(root)
    assert len(run.stages[1].rows) == 30 and run.stages[1].rows[-1]["accuracy_mean"] == 0.123
    assert any("1 repeated step(s)" in n for n in run.notes)
    assert len(run.stages[1].series("accuracy_mean")[0]) == 29  # NaN dropped, the rest kept
    assert any("line 34: the last line is incomplete" in n for n in run.notes)
    assert any("line 32: expected a JSON object, got list" in n for n in run.notes)
    page = write_report(root).read_text()
    assert "the last line is incomplete" in page


def test_run_without_summary_config_or_verify_summary(make_run) -> None:
    """Kinds come from metrics rows and pairs.jsonl, numbers from the stage folders."""
    root = make_run()
    for name in ("summary.json", "config.yaml", "state.json"):
        (root / name).unlink()
    verify = root / "stages" / "02-verify"
    (verify / "verify_summary.json").unlink()
    (verify / "pairs.jsonl").write_text("".join(json.dumps({"pair_type": t}) + "\n" for t in ["penalty"] * 3 + ["reflective"]))
    (verify / "eval").mkdir()
    eval_dir = root / "stages" / "03-dpo" / "eval"
    (eval_dir / "tomato").mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "inconsistency_rate": 0.04}))
    (eval_dir / "tomato" / "metrics.json").write_text(json.dumps({"accuracy": 0.25}))
    mapping = {"heldout": {"accuracy": 0.6, "by_type": {"multiple choice": 0.7}},
               "mvbench": {"accuracy": None, "n": 0, "n_missing_media": 3, "profiles": {"veripo-eval": {}}}}
    (root / "stages" / "04-grpo-video" / "eval").mkdir()
    (root / "stages" / "04-grpo-video" / "eval" / "metrics.json").write_text(json.dumps(mapping))
    run = load_run(root)
    assert [s.kind for s in run.stages] == ["sft", "grpo", "verify", "dpo", "grpo", "verify", "dpo"]
    assert run.stages[4].eval == mapping
    assert "stage grpo-video, eval mvbench: 3 item(s) with missing media not evaluated" in run.notes
    assert run.stages[2].pairs == {"penalty": 3, "reflective": 1}
    assert run.stages[3].eval == {"heldout": {"accuracy": 0.5, "inconsistency_rate": 0.04}, "tomato": {"accuracy": 0.25}}
    assert run.stages[1].wall_time_s == 75.0  # the last row's time_s
    assert any("summary.json" in n for n in run.notes) and any("config.yaml: No such file" in n for n in run.notes)
    page = write_report(root).read_text()
    assert "50.0%" in page and "config.yaml not found" in page
    assert "per task" not in page  # no held-out item named a task: no empty table
    assert (root / "report" / "pair_mix.png").is_file()


def test_malformed_summary_and_empty_run(tmp_path: Path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "summary.json").write_text('{"run": "x", "stages": [')
    odd = tmp_path / "odd-run"  # well-formed JSON of the wrong shapes
    odd.mkdir()
    (odd / "summary.json").write_text(json.dumps({"run": "odd", "stages": [
        {"index": 0, "name": "g", "kind": "grpo", "eval": ["not", "a", "dict"], "pairs": 3, "wall_time_s": "long"},
        {"index": "one"}, "text", {"index": 2, "eval": {"heldout": {"accuracy": "high", "response_len": 12}}}]}))
    odd_run = load_run(odd)
    assert [(s.index, s.name, s.eval, s.pairs, s.wall_time_s) for s in odd_run.stages] == [
        (0, "g", {}, {}, None), (2, "stage-2", {"heldout": {"accuracy": "high", "response_len": 12}}, {}, None)]
    assert "12.0" in write_report(odd).read_text()
    report = write_report(empty)
    page = report.read_text()
    assert "summary.json: line 1: not valid JSON" in page and "no stages found" in page
    assert page.count('class="nodata" id="plot-') == len(PLOT_NAMES) and "note(s) about missing" in page
    assert not list(report.parent.glob("*.png"))


def test_plots_without_data_are_skipped_and_stale_pngs_removed(make_run) -> None:
    root = make_run()
    (root / "report").mkdir()
    (root / "report" / "pair_mix.png").write_bytes(b"left by an earlier report")
    summary = json.loads((root / "summary.json").read_text())
    for stage in summary["stages"]:
        stage.pop("pairs", None)
    (root / "summary.json").write_text(json.dumps(summary))
    for folder in ("02-verify", "05-verify-2"):
        shutil.rmtree(root / "stages" / folder)
    page = write_report(root).read_text()
    assert not (root / "report" / "pair_mix.png").exists()
    assert 'id="plot-pair_mix"' in page and "no verifier stage with pair counts" in page


def test_write_report_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")
