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
