"""`veripo plan CONFIG [overrides]`: a dry run that needs neither the model nor the data (neither /models nor
data/ exists here), on the shipped 7B config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.cli.main import app

SEVEN_B = str(Path(__file__).resolve().parents[2] / "configs" / "qwen2.5-vl-7b" / "veripo.yaml")
GRPO_STAGES = ("reasoning-activation", "group-slow-search", "video-grpo-it1", "video-grpo-it2")


def plan(*args: str) -> str:
    result = CliRunner().invoke(app, ["plan", *args], terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, stage: str) -> list[str]:
    line = next(line for line in output.splitlines() if re.match(rf"│ {re.escape(stage)}\s+│", line))
    return [cell.strip() for cell in line.strip("│").split("│")]


@pytest.fixture(scope="module")
def seven_b() -> str:
    assert not Path("/models/Qwen2.5-VL-7B-Instruct").exists()
    return plan(SEVEN_B)


def test_7b_plan_uses_the_published_dimensions_and_declared_sizes(seven_b: str):
    assert "published dimensions of Qwen2.5-VL-7B-Instruct" in seven_b and "8,292,166,656 parameters" in seven_b
    assert "strategy: fsdp2 over 8 rank(s)" in seven_b
    assert "compute bfloat16, master weights and optimizer float32" in seven_b
    # stage, kind, questions, from, passes, rollouts, steps: 70k questions / 64 = 1094 rollout batches x 4 steps
    assert row(seven_b, "reasoning-activation")[:7] == ["reasoning-activation", "grpo", "70.0k", "size:", "1.00",
                                                        "560.1k", "4376"]
    assert row(seven_b, "group-slow-search")[:7] == ["group-slow-search", "grpo", "47.0k", "size:", "1.00",
                                                     "376.3k", "5880"]


def test_7b_plan_every_grpo_stage_covers_its_data(seven_b: str):
    for stage in GRPO_STAGES:
        assert float(row(seven_b, stage)[4]) >= 1.0, stage
    assert "warning" not in seven_b


def test_7b_plan_memory_and_verdict(seven_b: str):
    mem = [r for r in seven_b.splitlines() if r.startswith("│ reasoning-activation")][1]
    cells = [c.strip() for c in mem.strip("│").split("│")]
    # FSDP2 over 8 with ZeRO-1 for the rest: per rank the 6.5e9 decoder-layer parameters / 8 plus the other 1.8e9
    # whole (2.58e9): bf16 copies 2 B each, fp32 masters and gradients 4 B each, the AdamW moments (8 B) of 1/8
    # of every parameter
    assert cells[1:5] == ["4.81", "9.62", "9.62", "7.72"]
    assert cells[-1] == "fits in 80 GiB"


def test_without_checkpointing_the_7b_does_not_fit():
    out = plan(SEVEN_B, "model.gradient_checkpointing=false")
    assert "does not fit in 80 GiB" in out and "gradient checkpointing off" in out


def test_gpu_memory_flag_overrides_the_hardware_section():
    assert "does not fit in 40 GiB" in plan(SEVEN_B, "--gpu-memory", "40")


def test_warning_fires_on_max_steps_1():
    out = plan(SEVEN_B, "grpo.max_steps=1")
    assert "warning: stage 'reasoning-activation' uses 64 of its 70000 questions (0.09%" in out
    assert "warning: stage 'video-grpo-it2' uses 64 of its 24000 questions" in out


def test_questions_are_counted_from_the_files_when_present(tmp_path: Path):
    rows = [{"problem": f"q{i}", "solution": "<answer>1</answer>", "problem_type": "numerical"} for i in range(10)]
    (tmp_path / "math.json").write_text(json.dumps(rows))
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: /nowhere/Qwen2.5-VL-3B-Instruct}}\ngrpo: {{rollout_batch_size: 4, "
                      f"global_batch_size: 32, epochs: 2}}\nstages:\n  - name: g\n    kind: grpo\n    data:\n"
                      f"      - {{path: {tmp_path / 'math.json'}, size: 999}}\n")
    out = plan(str(config))
    assert "published dimensions of Qwen2.5-VL-3B-Instruct" in out
    assert row(out, "g")[:7] == ["g", "grpo", "10", "file", "2.00", "160", "5"]  # ceil(2 x 10 / 4) batches
    assert "no GPU memory given" in out


@pytest.mark.parametrize("args, message", [
    (["stages.0.data.0.size=0"], "'stages[0].data[0].size': got 0"),
    (["model.path=/models/unknown-model"], "names no checkpoint veripo knows"),
    (["--frame-size", "big"], "--frame-size 'big' must be WxH"),
    (["hardware.gpu_memory_gib=.nan"], "'hardware.gpu_memory_gib': got nan"),
])
def test_bad_input_exits_2_with_the_key(args: list[str], message: str):
    result = CliRunner().invoke(app, ["plan", SEVEN_B, *args], terminal_width=250)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_model_config_flag(tmp_path: Path):
    from veripo.models.published_configs import published_config

    (tmp_path / "config.json").write_text(json.dumps(published_config("Qwen3-VL-8B-Instruct")))
    out = plan(SEVEN_B, "--model-config", str(tmp_path / "config.json"))
    assert "8,767,123,696 parameters" in out and f"--model-config {tmp_path}" in out


def test_a_token_budget_narrows_the_planned_micro_batches():
    """``veripo plan`` sizes activations by the widest micro-batch the recipes would run: the count and the token
    budget, whichever is stricter (``widest_micro_batch`` runs the recipes' own plan)."""
    from veripo.recipes.plan import widest_micro_batch

    # shared prefix: prompt 1000 + rows x 100 within 1350 -> 3 of 8 rows; the count 2 is stricter still
    assert widest_micro_batch(1000, 100, 8, None, 1350, True) == 3
    assert widest_micro_batch(1000, 100, 8, 2, 1350, True) == 2
    assert widest_micro_batch(1000, 100, 8, None, None, True) == 8
    assert widest_micro_batch(1000, 100, 8, None, 500, True) == 1  # over the budget: one row at a time
    assert widest_micro_batch(1000, 100, 4, None, 1450, True, unit=2) == 4  # DPO: two pairs of two rows

    def activations(*overrides: str) -> str:
        memory = [r for r in plan(SEVEN_B, *overrides).splitlines() if r.startswith("│ group-slow-search")][1]
        return [c.strip() for c in memory.strip("│").split("│")][5]

    # all 8 responses at once, then one at a time (every response over a 1-token budget)
    whole, narrowed = activations("grpo.micro_batch_size=null"), activations("grpo.micro_batch_size=null",
                                                                              "grpo.max_tokens_per_micro_batch=1")
    assert float(narrowed) < float(whole), (whole, narrowed)


def test_dpo_pairs_are_bounded_by_the_rollout_groups_not_the_questions():
    # the demo's slow-search stage has 64 questions and 24 rollout batches of 8: 192 groups (each question on three
    # passes), at most 4 pairs each; the verify stage of a demo run makes 700+ pairs, more than 4 x 64
    out = plan(str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"))
    assert "[pair-fast-align] pairs: at most 768 (max_pairs_per_question 4 x the 192 rollout groups" in out
    assert row(out, "pair-fast-align")[2] == "768 pairs"
