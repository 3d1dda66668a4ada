"""``veripo study``: a 2-seed study of every arm on the tiny model (sizes cut down), its report files, and an
interrupted study that a rerun continues in the same run directories."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.recipes.study import find_run, run_folder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHORT = ["rollout.max_new_tokens=24", "grpo.max_steps=1", "sft.max_steps=2", "dpo.max_steps=1", "iterations=0",
         "eval.max_new_tokens=16", "eval.batch_size=8", "data.0.synthetic.n=8", "stages.1.data.0.synthetic.n=8",
         "stages.2.data.0.synthetic.n=8", "eval.heldout.0.synthetic.n=6"]


# grpo-time differs from grpo-rollouts only in its budget (tests/report/test_demo_compare_config.py); sft-only
# runs in the interrupted study below
ARMS_RUN = ["veripo", "grpo-rollouts"]


def overrides(model_dir: Path) -> list[str]:
    return [*SHORT, f"model.path={model_dir}", "model.build_tiny=null"]


def test_a_two_seed_study_of_every_arm(tmp_path, tiny_model_dir):
    from veripo.cli.main import app

    out = tmp_path / "study"
    arms = ["study", "--seeds", "0-1", "--arms", ",".join(ARMS_RUN), "--out", str(out), "--n-boot", "500"]
    result = CliRunner().invoke(app, [*arms, *overrides(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "study.json").read_text())
    assert list(data["arms"]) == ARMS_RUN
    veripo = data["arms"]["veripo"]["stages"]
    assert [s["stage"] for s in veripo] == ["sft", "reasoning-activation", "group-slow-search", "pair-fast-align"]
    for arm, entry in data["arms"].items():
        warm = entry["stages"][0]
        assert warm["stage"] == "sft" and warm["metrics"] == veripo[0]["metrics"], arm  # one shared warm start
        for stage in entry["stages"]:
            acc = stage["metrics"]["accuracy"]
            assert acc["n_seeds"] == 2 and acc["n_items"] == 6 and set(acc["per_seed"]) == {"0", "1"}
            assert acc["low"] <= acc["mean"] <= acc["high"]
            assert acc["mean"] == pytest.approx(sum(acc["per_seed"].values()) / 2)
    # the per-seed values are the runs' own held-out numbers (summary.json)
    for seed in (0, 1):
        run = find_run(run_folder(out, "veripo", seed))
        summary = json.loads((run / "summary.json").read_text())
        last = [s for s in summary["stages"] if s.get("eval")][-1]["eval"]["heldout"]
        assert veripo[-1]["metrics"]["accuracy"]["per_seed"][str(seed)] == pytest.approx(last["accuracy"])
        assert veripo[-1]["metrics"]["response_len"]["per_seed"][str(seed)] == pytest.approx(last["response_len"])
    # the baselines' budgets follow the VerIPO run of their seed
    veripo_run = find_run(run_folder(out, "veripo", 0))
    drawn = sum(s["questions_drawn"] for s in json.loads((veripo_run / "summary.json").read_text())["stages"]
                if s["kind"] == "grpo")
    grpo = json.loads((find_run(run_folder(out, "grpo-rollouts", 0)) / "summary.json").read_text())["stages"][0]
    assert grpo["questions_drawn"] == drawn
    whats = {(d["what"], d["metric"]) for d in data["differences"]}
    assert ("veripo: gain of the last stage over the warm start", "accuracy") in whats
    assert ("veripo: what DPO stage pair-fast-align changed", "accuracy") in whats
    assert ("veripo vs grpo-rollouts: last stages", "accuracy") in whats
    assert all(d["n_seeds"] == 2 and ("significant" in d["sentence"]) for d in data["differences"])
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert {r["arm"] for r in rows} == set(ARMS_RUN) and {"seed_0", "seed_1"} <= set(rows[0])
    text = (out / "study.md").read_text()
    assert "Last stage of each arm, side by side" in text and "veripo study --seeds 0-1 --arms" in text
    assert (out / "study_intervals.png").stat().st_size > 0
    # a rerun finds every run finished and starts none
    again = CliRunner().invoke(app, [*arms, *overrides(tiny_model_dir)])
    assert again.exit_code == 0, again.output
    assert again.output.count("already finished") == 4 and "starting" not in again.output
    # --report-only starts nothing and reports the seeds that have finished runs
    only = CliRunner().invoke(app, ["study", "--seeds", "0-2", "--arms", ",".join(ARMS_RUN), "--out", str(out),
                                    "--n-boot", "500", "--report-only", *overrides(tiny_model_dir)])
    assert only.exit_code == 0, only.output
    assert "starting" not in only.output and not run_folder(out, "veripo", 2).exists()
    assert "seeds finished per arm: veripo [0, 1]" in (out / "study.md").read_text()


def test_an_interrupted_study_continues_in_the_same_run_directories(tmp_path, tiny_model_dir):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "veripo", "study", "--seeds", "0", "--arms", "veripo,sft-only", "--out", str(out),
               "--n-boot", "200", "--parallel", "1", *overrides(tiny_model_dir), "sft.save_every=1", "sft.max_steps=6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    study = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = run_folder(out, "veripo", 0)
    deadline = time.monotonic() + 300  # ends at the first checkpoint; generous for a loaded parallel suite
    while time.monotonic() < deadline:  # stop it once the VerIPO run has saved an SFT checkpoint
        run = find_run(folder)
        if run is not None and any(run.glob("stages/00-sft/checkpoints/*")):
            break
        time.sleep(0.2)
    study.send_signal(signal.SIGTERM)
    output, _ = study.communicate(timeout=120)
    assert study.returncode != 0, output
    first = find_run(folder)
    assert first is not None and not (folder / "done.json").exists()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"resuming {first}" in finished.stdout
    assert [p for p in folder.iterdir() if p.is_dir()] == [first]  # no second run directory
    state = json.loads((first / "state.json").read_text())
    assert len(state["completed"]) == 5 and (folder / "done.json").exists()
    assert json.loads((out / "study.json").read_text())["arms"]["sft-only"]["stages"][-1]["stage"] == "sft-only"


def _last_eval(run: Path) -> dict:
    """The last stage's held-out numbers, wall time left out."""
    last = [s for s in json.loads((run / "summary.json").read_text())["stages"] if s.get("eval")][-1]
    return {k: v for k, v in last["eval"]["heldout"].items() if k != "wall_time_s"}


def test_a_fork_continues_another_studys_runs_from_a_stage(tmp_path, tiny_model_dir):
    from veripo.cli.main import app

    def study(out: Path, *extra: str):
        return CliRunner().invoke(app, ["study", "--seeds", "0", "--arms", "veripo", "--out", str(out), "--n-boot",
                                        "200", *extra, *overrides(tiny_model_dir)])

    source = tmp_path / "source"
    assert study(source).exit_code == 0
    source_run = find_run(run_folder(source, "veripo", 0))
    # the same config from the verify stage on: the fork trains verify and DPO again and lands where the source did
    same = tmp_path / "same"
    result = study(same, "--fork-from", str(source), "--from-stage", "verify")
    assert result.exit_code == 0, result.output
    assert "forked" in result.output and "before stage verify" in result.output
    folder = run_folder(same, "veripo", 0)
    fork = find_run(folder)
    assert fork.name == source_run.name and fork != source_run
    assert json.loads((folder / "forked.json").read_text()) == {"from": str(source_run.resolve()),
                                                                "before_stage": "verify"}
    state = json.loads((fork / "state.json").read_text())
    assert [e["name"] for e in state["completed"]] == ["sft", "reasoning-activation", "group-slow-search", "verify",
                                                       "pair-fast-align"]
    (change,) = state["config_changes"]  # the run's folder is the only difference, and it is recorded
    lines = [ln for ln in change["diff"].splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
    assert change["completed_stages"] == 3 and len(lines) == 2 and all("output_dir:" in ln for ln in lines)
    assert _last_eval(fork) == _last_eval(source_run)  # a resumed run is exact
    # the kept stages were copied, not trained: their checkpoints are byte-identical
    kept = sorted(p.relative_to(source_run) for p in (source_run / "stages" / "02-group-slow-search").rglob("*")
                  if p.is_file())
    assert kept and all((fork / p).read_bytes() == (source_run / p).read_bytes() for p in kept)
    # a stage-level change from the fork point on: recorded in the run's state as a config change
    beta = tmp_path / "beta"
    result = study(beta, "--fork-from", str(source), "--from-stage", "verify", "stages.4.dpo.beta=0.5")
    assert result.exit_code == 0, result.output
    changed = json.loads((find_run(run_folder(beta, "veripo", 0)) / "state.json").read_text())["config_changes"]
    assert len(changed) == 1 and changed[0]["completed_stages"] == 3 and "+    beta: 0.5" in changed[0]["diff"]
    # what the kept stages were trained with cannot change: a global key, or a stage before the fork point
    for bad, where in (("dpo.lr=0.001", "dpo.lr"), ("stages.2.grpo.lr=0.001", "stage 'group-slow-search'")):
        refused = study(tmp_path / "refused", "--fork-from", str(source), "--from-stage", "verify", bad)
        assert refused.exit_code == 2 and where in refused.output, refused.output
        assert not (tmp_path / "refused").exists()
    unknown = study(tmp_path / "unknown", "--fork-from", str(source), "--from-stage", "dpo2")
    assert unknown.exit_code == 2 and "no finished stage of that name" in unknown.output
    alone = study(tmp_path / "alone", "--from-stage", "verify")
    assert alone.exit_code == 2 and "go together" in alone.output
