"""``eval_every``: a training stage evaluates on the held-out set every N optimizer steps, writes an ``eval`` row,
and keeps the weights of its best evaluation in ``<stage>/best/`` beside the last checkpoint; the best so far
travels in the checkpoint's counters. The held-out evaluation is scripted here (its own tests are in
tests/eval): scores 0.2, 0.5, 0.3 at steps 1, 2, 3 must keep step 2's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from veripo.config import RunConfig, Stage
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.models import load_policy
from veripo.recipes.checkpoint import Progress
from veripo.recipes.common import Stopwatch
from veripo.recipes.context import StageContext
from veripo.recipes.stage_loop import StageLoop, evaluate_if_due


@pytest.fixture()
def stage(tiny_model_dir: Path, tmp_path: Path):
    policy = load_policy(tiny_model_dir)
    ctx = StageContext(cfg=RunConfig(), stage=Stage(name="s", kind="sft"), index=0, stage_dir=tmp_path,
                       policy=policy, samples=[], encode=lambda sample: {}, show_progress=False)
    writer = JsonlWriter(tmp_path / "metrics.jsonl", fsync="none")
    writer.open()
    loop = StageLoop(ctx, torch.optim.AdamW(policy.model.parameters()), None, Progress(), Stopwatch(), 1.0,
                     {"metrics.jsonl": writer})
    yield ctx, loop, writer
    writer.close()


def run_steps(ctx, loop, writer, scores: dict[int, float], every: int | None, steps: int,
              start: int = 1) -> list[Path]:
    folders: list[Path] = []

    def evaluate(out_root: Path) -> dict:
        folders.append(out_root)
        return {"heldout": {"accuracy": scores[loop.progress.step]}, "other": {"accuracy": None}}

    ctx.evaluate = evaluate
    bias = ctx.policy.model.lm_head.weight
    for step in range(start, steps + 1):
        loop.progress.step = step
        with torch.no_grad():
            bias.fill_(float(step))  # weights that say which step they are from
        evaluate_if_due(ctx, loop, every)
    writer.sync()
    return folders


def test_best_weights_are_kept_and_every_evaluation_is_a_metrics_row(stage):
    ctx, loop, writer = stage
    folders = run_steps(ctx, loop, writer, {1: 0.4, 2: 1.0, 3: 0.6}, every=1, steps=3)
    assert [f.name for f in folders] == ["step-000001", "step-000002", "step-000003"]
    rows = [r for r in read_jsonl(ctx.stage_dir / "metrics.jsonl") if r["kind"] == "eval"]
    # the mean over benchmarks, a benchmark without accuracy counting as 0
    assert [(r["step"], r["score"]) for r in rows] == [(1, 0.2), (2, 0.5), (3, 0.3)]
    best = json.loads((ctx.stage_dir / "best" / "best.json").read_text())
    assert (best["step"], best["score"]) == (2, 0.5)
    saved = load_file(ctx.stage_dir / "best" / "model.safetensors")
    assert torch.all(saved["lm_head.weight"] == 2.0)  # step 2's weights, not the last step's
    assert loop.progress.extra == {"best": {"step": 2, "score": 0.5}, "eval_step": 3}
    assert not any(p.name.startswith(".") for p in ctx.stage_dir.iterdir())  # no temporary folders left


def test_eval_every_counts_optimizer_steps_and_resumes_from_the_counters(stage):
    ctx, loop, writer = stage
    folders = run_steps(ctx, loop, writer, {s: 0.1 * s for s in range(1, 8)}, every=3, steps=7)
    assert [f.name for f in folders] == ["step-000003", "step-000006"]
    # a resumed stage carries the counters of its checkpoint: the evaluation at step 6 is not repeated, and
    # a worse score does not replace the best
    loop.progress.extra = {"best": {"step": 6, "score": 0.9}, "eval_step": 6}
    more = run_steps(ctx, loop, writer, {s: 0.1 for s in range(1, 10)}, every=3, steps=9, start=7)
    assert [f.name for f in more] == ["step-000009"]
    assert json.loads((ctx.stage_dir / "best" / "best.json").read_text())["step"] == 6


def test_without_a_heldout_set_or_eval_every_nothing_is_evaluated(stage):
    ctx, loop, writer = stage
    assert run_steps(ctx, loop, writer, {1: 1.0}, every=None, steps=1) == []
    ctx.evaluate = None
    loop.progress.step = 5
    evaluate_if_due(ctx, loop, 1)
    assert not (ctx.stage_dir / "best").exists()


def test_a_stage_using_under_5_percent_of_its_data_warns_by_name(tiny_model_dir: Path, tmp_path: Path):
    """run_training_stage says how a stage was sized and warns, naming it, when it uses under 5% of its data."""
    from rich.console import Console

    from veripo.config.core import build
    from veripo.config.schema import GRPOConfig
    from veripo.recipes.sizing import grpo_size
    from veripo.recipes.stage_loop import Optimization, run_training_stage

    console = Console(record=True, width=300)
    ctx = StageContext(cfg=RunConfig(), stage=Stage(name="reasoning-activation", kind="grpo"), index=0,
                       stage_dir=tmp_path, policy=load_policy(tiny_model_dir), samples=[], encode=lambda s: {},
                       console=console, show_progress=False)

    class OneUnit:  # a stage whose one unit does no work: only the sizing and the loop around it matter here
        outputs = ["metrics.jsonl"]
        title, time_budget_s = "t", None
        size = grpo_size(build(GRPOConfig, {"max_steps": 1}), 8, 70_000)
        units, steps = size.units, size.steps

        def start(self, loop):
            pass

        def run_unit(self, unit, loop):
            return {}

        def numbers(self, progress=None):
            return {}

    result = run_training_stage(ctx, OneUnit(), Optimization(1e-6, 0.0, 1.0, "constant", 0, 1))
    text = console.export_text()
    assert "1 units, 8 optimizer steps: 64 questions drawn from 70000 (0.000914 passes; max_steps 1)" in text
    assert "warning: stage 'reasoning-activation' uses 64 of its 70000 questions (0.09%" in text
    assert result.numbers == {"wall_time_s": result.numbers["wall_time_s"]}
