"""A tiny run with ``logging.trackers``: every metric row of every stage, the held-out evaluation and the report
plots reach the trackers, at the run's global steps, equal to the run's own files; a tracker whose package is
missing stops ``veripo run`` with one line naming the extra (exit 2) before anything is written."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.report import tracker_stores as stores
from veripo.cli.main import app
from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run
from veripo.report.trackers import EXTRA


@pytest.mark.slow
def test_every_stage_metric_eval_result_and_plot_reaches_the_trackers(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "data", n=4, seed=3, kinds=("text",))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu",
        "rollout.num_generations=2", "rollout.max_new_tokens=6", "grpo.lr=1e-4", "grpo.rollout_batch_size=2",
        "grpo.global_batch_size=2", "grpo.rollout_batches=1", "sft.batch_size=2", "sft.max_steps=2",
        "eval.max_new_tokens=4", "logging.trackers=[tensorboard, mlflow]", "logging.project=trk",
    ])
    heldout = DataSource(path=str(data), name="held")
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(
        Stage(name="sft", kind="sft"), Stage(name="grpo", kind="grpo")),
        eval=dataclasses.replace(cfg.eval, heldout=(heldout,)))
    root = run(cfg, show_progress=False).root

    rows = [r for s in ("00-sft", "01-grpo") for r in read_jsonl(root / "stages" / s / "metrics.jsonl")]
    assert [r["kind"] for r in rows] == ["sft", "sft", "grpo", "grpo"]
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key in ("loss", "grad_norm", "lr"):
            expected.setdefault(f"{row['kind']}/{key}", []).append((row["global_step"], row[key]))
    expected["grpo/reward_mean"] = [(r["global_step"], r["reward_mean"]) for r in rows if r["kind"] == "grpo"]
    summary = json.loads((root / "summary.json").read_text())
    for stage, step in zip(summary["stages"], (2, 4)):
        expected["eval/held/accuracy"] = expected.get("eval/held/accuracy", []) + [(step, stage["eval"]["held"]["accuracy"])]
        expected[f"summary/{stage['name']}/steps"] = [(step, float(stage["steps"]))]

    store = root / "trackers"
    board = stores.tensorboard_scalars(store)
    flow = stores.mlflow_scalars(store, "trk", root.name)
    for key, points in expected.items():
        assert [s for s, _ in board[key]] == [s for s, _ in points], key
        assert [v for _, v in board[key]] == pytest.approx([v for _, v in points], rel=1e-6), key
        assert flow[key] == [(s, pytest.approx(v, rel=1e-12)) for s, v in points], key
    plots = sorted(p.stem for p in (root / "report").glob("*.png"))
    assert plots and stores.tensorboard_images(store) == sorted(f"report/{p}" for p in plots)
    assert sorted(Path(p).stem for p in stores.mlflow_artifacts(store, "trk", root.name, "report")) == plots


def test_veripo_run_with_a_tracker_not_installed_is_one_line_and_exit_2(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    result = CliRunner().invoke(app, ["run", f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny",
                                      "logging.trackers=[tensorboard, trackio]"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "trackio" in lines[0] and EXTRA in lines[0], result.output
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_a_crashed_and_resumed_run_logs_every_step_to_the_same_tracker_runs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after a unit's rows reached the trackers but before its checkpoint: the resumed run logs that unit
    again, at the same steps with the same values, into the same MLflow run and TensorBoard folder."""
    import veripo.recipes.stage_loop as stage_loop

    data = make_synthetic(tmp_path / "data", n=4, seed=3, kinds=("text",))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu", "rollout.num_generations=2",
        "rollout.max_new_tokens=6", "grpo.lr=1e-2", "grpo.rollout_batch_size=2", "grpo.global_batch_size=2",
        "grpo.rollout_batches=3", "logging.trackers=[tensorboard, mlflow]", "logging.project=trk",
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="grpo", kind="grpo"),))
    save = stage_loop.save_if_due

    def crash_before_the_second_checkpoint(ctx, loop, *, last, every, now=False):
        if loop.progress.unit == 2:
            raise KeyboardInterrupt("killed")
        save(ctx, loop, last=last, every=every, now=now)

    monkeypatch.setattr(stage_loop, "save_if_due", crash_before_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, show_progress=False)
    monkeypatch.setattr(stage_loop, "save_if_due", save)
    (root,) = (tmp_path / "runs").iterdir()
    run(None, resume=root, show_progress=False)

    rows = read_jsonl(root / "stages" / "00-grpo" / "metrics.jsonl")
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    flow = stores.mlflow_scalars(root / "trackers", "trk", root.name)  # one MLflow run: found again by name
    board = stores.tensorboard_scalars(root / "trackers")
    for key in ("loss", "reward_mean", "grad_norm"):
        logged = [(r["global_step"], r[key]) for r in rows]
        assert [s for s, _ in flow[f"grpo/{key}"]] == [1, 2, 3, 4, 3, 4, 5, 6]  # unit 1 (steps 3, 4) twice
        for step, value in flow[f"grpo/{key}"]:  # both copies of unit 1 equal the run's own record
            assert value == pytest.approx(dict(logged)[step], rel=1e-12), (key, step)
        assert dict(board[f"grpo/{key}"]) == pytest.approx(dict(logged), rel=1e-6)
