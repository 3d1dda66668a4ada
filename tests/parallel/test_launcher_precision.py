"""An accelerate launch exports its config's ``mixed_precision``; veripo takes precision from ``model.dtype`` /
``model.master_dtype`` only, so a launcher setting that asks for something else is refused before any model
loads (exit code 2 through the CLI), never silently ignored."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.config.schema import DistributedConfig
from veripo.errors import LaunchError, UserError
from veripo.parallel import DistInfo, Precision, make_strategy
from veripo.parallel.precision import check_launcher_precision

BF16 = Precision(torch.bfloat16, torch.float32)
FP32 = Precision()


@pytest.mark.parametrize(("asked", "precision"), [
    (None, FP32), (None, BF16), ("no", FP32), ("no", BF16), ("NO", BF16), ("bf16", BF16),
    ("bf16", Precision(torch.bfloat16, torch.bfloat16)),
])
def test_launcher_settings_veripo_honours_pass(asked, precision):
    env = {} if asked is None else {"ACCELERATE_MIXED_PRECISION": asked}
    check_launcher_precision(precision, env)
    assert make_strategy(DistributedConfig(), env, DistInfo(), precision).precision == precision


@pytest.mark.parametrize(("asked", "precision", "says"), [
    ("bf16", FP32, "model.dtype is torch.float32"),
    ("fp16", BF16, "'fp16' is not supported"),
    ("fp16", FP32, "'fp16' is not supported"),
    ("fp8", BF16, "'fp8' is not supported"),
])
def test_launcher_settings_veripo_would_ignore_are_refused(asked, precision, says):
    env = {"ACCELERATE_MIXED_PRECISION": asked}
    with pytest.raises(LaunchError, match=says) as raised:
        make_strategy(DistributedConfig(), env, DistInfo(), precision)
    assert isinstance(raised.value, UserError) and 'mixed_precision: "no"' in str(raised.value)


def test_a_refused_launch_is_one_line_and_exit_2(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    result = CliRunner().invoke(app, ["run", "configs/demo.yaml", f"output_dir={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert "accelerate mixed_precision 'fp16'" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # refused before the run directory is written
