"""Stages sized by their data (veripo.recipes.sizing): epochs (fractional too) or max_steps, the deprecated
rollout_batches alias, the under-5% warning, and the numbers against hand counts."""

from __future__ import annotations

import math
import warnings

import pytest

from veripo.config import ConfigError, GRPOConfig, RunConfig, load
from veripo.config.core import build
from veripo.recipes.sizing import batch_size_of, grpo_size


def grpo(**kw) -> GRPOConfig:
    return build(GRPOConfig, {"rollout_batch_size": 64, "global_batch_size": 128, **kw}, prefix="grpo")


def test_grpo_one_epoch_over_70k_questions():
    # Table 1's reasoning activation: 70,000 questions, 64 per rollout batch, 8 responses, 128 per step
    size = grpo_size(grpo(epochs=1), 8, 70_000)
    assert size.units == 1094  # ceil(70000 / 64): the last batch runs into the next epoch's order
    assert size.steps == 1094 * 4  # 64 x 8 / 128 = 4 optimizer steps per rollout batch
    assert size.drawn == 70_016 and size.warning("ra") is None
    assert size.basis == "epochs 1"


def test_grpo_default_is_one_epoch_and_fractional_epochs_round_up():
    assert grpo_size(grpo(), 8, 640).units == 10 and grpo_size(grpo(), 8, 640).basis == "epochs 1 (default)"
    assert grpo_size(grpo(epochs=0.25), 8, 640).units == 3  # 160 questions: 2.5 batches -> 3
    assert grpo_size(grpo(epochs=2.5), 8, 640).units == 25


def test_grpo_max_steps_counts_optimizer_steps_and_the_shorter_wins():
    assert grpo_size(grpo(max_steps=8), 8, 70_000).units == 2  # 4 steps per batch
    assert grpo_size(grpo(max_steps=9), 8, 70_000).units == 3  # rounded up to a whole rollout batch
    both = grpo_size(grpo(epochs=1, max_steps=8), 8, 70_000)
    assert both.units == 2 and both.basis == "epochs 1 and max_steps 8"
    assert grpo_size(grpo(epochs=0.5, max_steps=10_000), 8, 640).units == 5


def test_warning_below_five_percent_names_the_stage():
    small = grpo_size(grpo(max_steps=1), 8, 70_000)
    message = small.warning("reasoning-activation")
    assert message is not None and "stage 'reasoning-activation'" in message
    assert "uses 64 of its 70000 questions (0.09%" in message
    # 5% exactly is enough; just under is not
    assert grpo_size(grpo(rollout_batch_size=5, global_batch_size=40, max_steps=1), 8, 100).warning("s") is None
    assert grpo_size(grpo(rollout_batch_size=4, global_batch_size=32, max_steps=1), 8, 100).warning("s") is not None


def test_rollout_batches_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match=r"'grpo.rollout_batches' is deprecated.*grpo.epochs.*grpo.max_steps"):
        cfg = grpo(rollout_batches=3)
    size = grpo_size(cfg, 8, 70_000)
    assert (size.units, size.steps) == (3, 12) and "deprecated" in size.basis
    with pytest.raises(ConfigError, match="'grpo.rollout_batches' \\(deprecated\\) with epochs or max_steps"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grpo(rollout_batches=3, epochs=1)


def test_sft_and_dpo_batches_per_epoch_and_fractional_epochs():
    # 10 pairs in batches of 4: 3 batches per epoch (the last one short)
    assert batch_size_of(10, 4, 2, None).units == 6
    assert batch_size_of(10, 4, 2, None).drawn == 20
    assert batch_size_of(10, 4, 0.5, None).units == 2  # 1.5 batches -> 2
    assert batch_size_of(10, 4, None, 100).units == 100  # max_steps alone may run past an epoch
    assert batch_size_of(10, 4, 1, 2).units == 2 and batch_size_of(10, 4, 1, 2).drawn == 8
    assert batch_size_of(1000, 8, None, 1).warning("sft") is not None


@pytest.mark.parametrize("override, message", [
    ("grpo.epochs=0", "'grpo.epochs': got 0.0"), ("grpo.epochs=.nan", "'grpo.epochs': got nan"),
    ("grpo.epochs=.inf", "'grpo.epochs': got inf"), ("grpo.max_steps=0", "'grpo.max_steps': got 0"),
    ("dpo.epochs=-1", "'dpo.epochs': got -1.0"), ("sft.max_steps=-2", "'sft.max_steps': got -2"),
    ("grpo.eval_every=0", "'grpo.eval_every': got 0"), ("hardware.gpus=0", "'hardware.gpus': got 0"),
    ("hardware.gpu_memory_gib=-80", "'hardware.gpu_memory_gib': got -80.0"),
])
def test_bad_lengths_name_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(RunConfig, None, [override])


def test_stage_override_is_validated_with_its_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - {name: g, kind: grpo, grpo: {epochs: 0}}\n")
    with pytest.raises(ConfigError, match=r"'stages\[0\].grpo.epochs': got 0"):
        load(RunConfig, path)


def test_the_7b_config_covers_every_grpo_stage():
    from pathlib import Path

    cfg = load(RunConfig, Path(__file__).resolve().parents[2] / "configs" / "qwen2.5-vl-7b" / "veripo.yaml")
    assert (cfg.hardware.gpus, cfg.hardware.gpu_memory_gib) == (8, 80)
    for stage in (*cfg.stages, *cfg.loop):
        if stage.kind != "grpo":
            continue
        questions = sum(d.size for d in stage.data)
        size = grpo_size(cfg.section_for(stage, "grpo"), cfg.rollout.num_generations, questions)
        assert size.drawn >= questions and size.warning(stage.name) is None, stage.name
    sizes = [[d.size for d in s.data] for s in (*cfg.stages, *cfg.loop) if s.kind == "grpo"]
    assert sizes == [[1000, 30000, 39000], [4000, 9000, 10000, 24000], [24000]]
    assert math.isclose(grpo_size(cfg.section_for(cfg.stages[1], "grpo"), 8, 47_000).steps, 735 * 8)


def test_eval_every_needs_a_heldout_set(tmp_path):
    with pytest.raises(ConfigError, match=r"'grpo.eval_every': 5 with no eval.heldout"):
        load(RunConfig, None, ["grpo.eval_every=5"])
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - {name: d, kind: dpo, dpo: {eval_every: 2}}\n")
    with pytest.raises(ConfigError, match=r"'stages\[0\].dpo.eval_every': 2 with no eval.heldout"):
        load(RunConfig, path)
    path.write_text("eval: {heldout: [{path: h.json}]}\nstages:\n  - {name: d, kind: dpo, dpo: {eval_every: 2}}\n")
    assert load(RunConfig, path).section_for(load(RunConfig, path).stages[0], "dpo").eval_every == 2
