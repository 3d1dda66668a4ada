"""The CLI's one error boundary: an expected failure is one ``error:`` line and exit code 2, a bug is its
traceback, a line saying where to report it and exit code 1, a SIGTERM stop is exit code 143."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

import veripo.rewards.predictions as predictions
from veripo.cli.main import app
from veripo.config import ConfigError
from veripo.errors import RunStateError, Stopped


def _score_raising(monkeypatch, error: BaseException) -> tuple[int, str]:
    def load_predictions(*args, **kwargs):
        raise error

    monkeypatch.setattr(predictions, "load_predictions", load_predictions)
    result = CliRunner().invoke(app, ["score", "any.json", "--workers", "0"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


@pytest.mark.parametrize("error,says", [
    (ConfigError("config key 'grpo.lr': got inf"), "error: config key 'grpo.lr': got inf"),
    (RunStateError("runs/x: not a run"), "error: runs/x: not a run"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.jsonl"), "error: /data/out.jsonl: no space left on the device"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "error: /root/x: Permission denied"),
])
def test_expected_failures_are_one_line_and_exit_2(monkeypatch, error, says):
    code, output = _score_raising(monkeypatch, error)
    assert code == 2 and output.strip() == says and "Traceback" not in output


def test_a_bug_shows_its_traceback_and_where_to_report_it(monkeypatch):
    code, output = _score_raising(monkeypatch, ZeroDivisionError("division by zero"))
    assert code == 1 and "Traceback" in output and "ZeroDivisionError" in output and "Please report it" in output


def test_a_sigterm_stop_exits_143(monkeypatch):
    code, output = _score_raising(monkeypatch, Stopped("stage 'sft' saved a checkpoint"))
    assert code == 143 and "stopped: stage 'sft' saved a checkpoint" in output
