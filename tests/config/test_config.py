from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.config import ConfigError, GRPOConfig, RunConfig, build, dump_yaml, load, read_yaml


def test_defaults_follow_paper_table1():
    cfg = RunConfig()
    assert cfg.rollout.num_generations == 8
    assert cfg.rollout.temperature == 1.0
    assert cfg.dpo.beta == 0.1 and cfg.dpo.lr == 5e-7 and cfg.dpo.global_batch_size == 32
    assert cfg.grpo.kl_coef == 0.0 and cfg.grpo.clip_low is None  # the loss's own range (clipped: 0.2)
    assert cfg.discard_easy_prob == 0.8


def test_yaml_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ngrpo:\n  lr: 1e-6\n  rollout_batch_size: 64\nrollout:\n  num_generations: 4\n")
    cfg = load(RunConfig, p, ["rollout.num_generations=2", "grpo.accuracy_band=[0.1, 0.9]", "model.build_tiny=tiny"])
    assert cfg.name == "x"
    assert cfg.grpo.lr == pytest.approx(1e-6)  # YAML reads "1e-6" as a string: converted
    assert cfg.rollout.num_generations == 2
    assert cfg.grpo.accuracy_band == (0.1, 0.9)
    assert cfg.model.build_tiny == "tiny"


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_suggests_closest():
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, ["grpo.lrr=1e-6"])
    msg = str(e.value)
    assert "grpo.lrr" in msg and "Did you mean 'lr'" in msg and "clip_low" in msg


def test_wrong_type_names_key_value_and_expected():
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, ["rollout.num_generations=many"])
    msg = str(e.value)
    assert "rollout.num_generations" in msg and "'many'" in msg and "expected int" in msg


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, ["grpo.lr_schedule=cosin"])
    msg = str(e.value)
    assert "'constant'" in msg and "'linear'" in msg and "Did you mean 'cosine'" in msg


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError):
        build(GRPOConfig, {"micro_batch_size": True})


def test_cross_field_validation():
    # 10 questions x 8 responses = 80 responses: 64 per optimizer step does not divide them
    with pytest.raises(ConfigError) as e:
        load(RunConfig, None, ["grpo.rollout_batch_size=10", "grpo.global_batch_size=64"])
    assert "grpo.global_batch_size" in str(e.value) and "80 responses" in str(e.value)
    # paper Table 1, stage 1: 64 questions x 8 = 512 responses, 128 per step -> 4 steps
    cfg = load(RunConfig, None, ["grpo.rollout_batch_size=64", "grpo.global_batch_size=128"])
    assert cfg.grpo.global_batch_size == 128


def test_stage_list_entries_are_validated(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("stages:\n  - name: a\n    kind: grpo\n  - name: b\n    kind: dpoo\n")
    with pytest.raises(ConfigError) as e:
        load(RunConfig, p)
    assert "stages[1].kind" in str(e.value) and str(p) in str(e.value)
    cfg = load(RunConfig, p, ["stages.1.kind=dpo"])
    assert [s.kind for s in cfg.stages] == ["grpo", "dpo"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ngrpo: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert "bad.yaml" in str(e.value) and "line" in str(e.value)


def test_yaml_is_safe_loaded(tmp_path: Path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        read_yaml(p)


def test_dump_round_trip(tmp_path: Path):
    cfg = load(RunConfig, None, ["grpo.accuracy_band=[0.2, 0.8]", "name=rt"])
    p = tmp_path / "dump.yaml"
    p.write_text(dump_yaml(cfg))
    assert load(RunConfig, p) == cfg


def test_cli_config_show_reports_errors():
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "show", "grpo.lr=2e-6"])
    assert ok.exit_code == 0 and "lr: 2.0e-06" in ok.output
    bad = runner.invoke(app, ["config", "show", "rollout.engine=sglang"])  # not an engine
    assert bad.exit_code == 2


def test_stage_sections_override_and_validate(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("grpo:\n  lr: 1e-6\nstages:\n  - name: g\n    kind: grpo\n    grpo: {lr: 5e-7, global_batch_size: 32}\n")
    cfg = load(RunConfig, p)
    g = cfg.section_for(cfg.stages[0], "grpo")
    assert g.lr == pytest.approx(5e-7) and g.global_batch_size == 32 and g.clip_low is None
    p.write_text("stages:\n  - name: g\n    kind: grpo\n    grpo: {lrate: 5e-7}\n")
    with pytest.raises(ConfigError) as e:
        load(RunConfig, p)
    assert "stages[0].grpo.lrate" in str(e.value) and "Did you mean 'lr'" in str(e.value)


def test_an_eval_stage_kind_is_rejected_at_validation(tmp_path):
    """Held-out evaluation runs after every training stage (eval.heldout); ``kind: eval`` is not a stage."""
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - {name: e, kind: eval}\n")
    with pytest.raises(ConfigError) as e:
        load(RunConfig, path)
    assert "kind" in str(e.value) and "'grpo'" in str(e.value)


@pytest.mark.parametrize(("override", "key"), [
    ("grpo.policy_loss=gspo-typo", "grpo.policy_loss"), ("grpo.loss_agg=token_mean", "grpo.loss_agg"),
    ("grpo.advantage=grp", "grpo.advantage"), ("dpo.loss_type=ipo-typo", "dpo.loss_type"),
])
def test_an_unregistered_algorithm_fails_before_the_run_starts(tmp_path, override, key):
    from veripo.recipes.veripo import run

    cfg = load(RunConfig, None, [f"output_dir={tmp_path}", override])
    with pytest.raises(ConfigError) as e:
        run(cfg, show_progress=False)
    assert key in str(e.value) and "expected one of" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_micro_batch_sizes_must_be_positive():
    with pytest.raises(ConfigError, match="grpo.micro_batch_size"):
        load(RunConfig, None, ["grpo.micro_batch_size=0"])
    with pytest.raises(ConfigError, match="dpo.micro_batch_size"):
        load(RunConfig, None, ["dpo.micro_batch_size=-1"])
