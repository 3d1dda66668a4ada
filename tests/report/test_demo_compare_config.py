"""``veripo demo --compare``: the GRPO-only run's config, built from a finished VerIPO run directory."""

from __future__ import annotations

import json
from pathlib import Path

from veripo.cli.demo import DEMO_CONFIG
from veripo.recipes.baselines import grpo_only_config
from veripo.config import RunConfig, load


def test_grpo_only_config_reuses_the_veripo_run(tmp_path: Path, monkeypatch) -> None:
    cfg = load(RunConfig, DEMO_CONFIG)
    run = tmp_path / "runs" / "demo-1"
    sft = run / "stages" / "00-sft"
    (sft / "checkpoints" / "ckpt-000070").mkdir(parents=True)
    (sft / "latest.json").write_text(json.dumps({"checkpoint": "ckpt-000070"}))
    stages = [{"index": 0, "name": "sft", "kind": "sft", "wall_time_s": 100.0},
              {"index": 1, "name": "reasoning-activation", "kind": "grpo", "wall_time_s": 20.0},
              {"index": 2, "name": "verify", "kind": "verify", "wall_time_s": 0.5},
              {"index": 3, "name": "pair-fast-align", "kind": "dpo", "wall_time_s": 30.0}]
    (run / "summary.json").write_text(json.dumps({"stages": stages}))
    monkeypatch.chdir(tmp_path)

    out = grpo_only_config(cfg, Path("runs/demo-1"))  # relative, as `veripo demo` gets it

    assert out.name == "demo-grpo-only" and out.loop == ()
    assert out.model.path == str(sft.resolve() / "checkpoints" / "ckpt-000070")  # the same warm start
    assert out.grpo.time_budget_s == 50.5  # everything VerIPO did after the warm start
    (stage,) = out.stages
    assert stage.kind == "grpo"
    grpo_sources = {d.path for s in (*cfg.stages, *cfg.loop) if s.kind == "grpo" for d in s.data}
    assert {Path(d.path) for d in stage.data} == {run.resolve() / "data" / p for p in grpo_sources}
    assert out.data == stage.data  # the warm start's 480 training questions are not regenerated
    for d in (*stage.data, *out.eval.heldout):  # absolute: the new run must not nest them under its own folder
        assert Path(d.path).is_absolute() and Path(d.path).is_relative_to(run.resolve() / "data"), d.path


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "demo-1"
    sft = run / "stages" / "00-sft"
    (sft / "checkpoints" / "ckpt-000070").mkdir(parents=True)
    (sft / "latest.json").write_text(json.dumps({"checkpoint": "ckpt-000070"}))
    stages = [{"index": 0, "name": "sft", "kind": "sft", "wall_time_s": 100.0},
              {"index": 1, "name": "reasoning-activation", "kind": "grpo", "wall_time_s": 20.0, "questions_drawn": 192},
              {"index": 2, "name": "group-slow-search", "kind": "grpo", "wall_time_s": 20.0, "questions_drawn": 197},
              {"index": 3, "name": "pair-fast-align", "kind": "dpo", "wall_time_s": 30.0}]
    (run / "summary.json").write_text(json.dumps({"stages": stages}))
    return run


def test_grpo_only_for_as_many_rollout_groups_as_veripo_drew(tmp_path: Path) -> None:
    cfg = load(RunConfig, DEMO_CONFIG)  # 8 questions x 8 responses per rollout batch, one step each
    out = grpo_only_config(cfg, _fake_run(tmp_path), budget="rollouts")
    # 192 + 197 = 389 questions: 49 rollout batches of 8 (the last one rounded up)
    assert out.grpo.max_steps == 49 and out.grpo.epochs is None and out.grpo.time_budget_s is None
    assert out.name == "demo-grpo-only-rollouts" and [s.kind for s in out.stages] == ["grpo"]
    steps = load(RunConfig, DEMO_CONFIG, ["grpo.global_batch_size=32"])  # two optimizer steps per rollout batch
    assert grpo_only_config(steps, _fake_run(tmp_path / "b"), budget="rollouts").grpo.max_steps == 98


def test_sft_only_sees_one_reference_chain_per_question_veripo_drew(tmp_path: Path) -> None:
    from veripo.recipes.baselines import sft_only_config

    cfg = load(RunConfig, DEMO_CONFIG, ["sft.batch_size=10"])
    run = _fake_run(tmp_path)
    out = sft_only_config(cfg, run)
    assert out.sft.max_steps == 39 and out.sft.epochs is None  # ceil(389 / 10)
    (stage,) = out.stages
    assert stage.kind == "sft" and out.model.path.endswith("checkpoints/ckpt-000070")
    assert {Path(d.path).name for d in stage.data} == {"activation", "slow-search", "video"}
