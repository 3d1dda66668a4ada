"""`veripo model build-tiny` / `veripo model info` and `veripo demo` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from veripo.cli.main import app


def test_build_tiny_and_info(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["model", "build-tiny", str(tmp_path / "m"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "qwen2_5_vl" in result.output and (tmp_path / "m" / "model.safetensors").exists()
    info = runner.invoke(app, ["model", "info", str(tmp_path / "m")])
    assert info.exit_code == 0 and "parameters" in info.output


def test_bad_arguments(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["model", "build-tiny", str(tmp_path / "m"), "--size", "huge"])
    assert result.exit_code == 2 and "huge" in result.output
    result = runner.invoke(app, ["model", "info", str(tmp_path)])
    assert result.exit_code == 2 and "no config.json" in result.output


def test_sample_prints_rollouts(tiny_model_dir):
    result = CliRunner().invoke(app, ["sample", "--model-dir", str(tiny_model_dir), "--rollouts", "2",
                                      "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "rollout 0" in result.output and "rollout 1" in result.output and "red square" in result.output


def test_build_tiny_of_another_family_and_its_info(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["model", "build-tiny", str(tmp_path / "m"), "--family", "qwen3.5"])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["model", "info", str(tmp_path / "m")])
    assert info.exit_code == 0, info.output
    assert "qwen3_5 (family qwen3.5)" in info.output and "per-sequence fallback" in info.output
    assert "patch 16" in info.output


def test_unknown_family_is_refused(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["model", "build-tiny", str(tmp_path / "m"), "--family", "llava"])
    assert result.exit_code == 2 and "llava" in result.output and not (tmp_path / "m").exists()
    result = runner.invoke(app, ["demo", "--family", "llava"])
    assert result.exit_code == 2 and "unknown model family 'llava'" in result.output


def test_demo_family_overrides():
    from veripo.cli.demo import family_overrides

    assert family_overrides("qwen2.5-vl") == ["model.family=qwen2.5-vl"]  # the demo as measured
    # patch 16 x merge 2: 56 px frames round to 64 (the demo's 56 x 56 budget would shrink them to 32)
    assert family_overrides("qwen3-vl") == ["model.family=qwen3-vl", "name=demo-qwen3-vl", "media.max_pixels=4096"]
