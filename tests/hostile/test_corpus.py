"""Every case of the hostile-input corpus (tests/hostile/hostile_cases.py) through the real ``veripo`` command: in
process with typer's runner, or as a real process where a case needs signals. For each case: the exit code
and message it promises, no Python traceback, and no file changed that it should leave alone (hashes of
everything in the case's folder before and after; a failing command creates nothing outside ``may_change``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hostile_cases import CASES, Case
from hostile_env import Env
from veripo.cli.main import app


def _hashes(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _allowed(name: str, patterns: tuple[str, ...]) -> bool:
    if name == ".lock" or name.endswith("/.lock"):  # a run directory's lock file (docs/reliability.md)
        return True
    return any(fnmatch.fnmatch(name, p) or name.startswith(p.rstrip("*").rstrip("/") + "/") for p in patterns)


def test_the_corpus_is_large_and_its_ids_unique():
    ids = Counter(c.id for c in CASES)
    assert not [i for i, n in ids.items() if n > 1]
    assert len(CASES) >= 80, len(CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES])
def test_hostile_case(case: Case, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(root=tmp_path / "case", model_dir=lambda: request.getfixturevalue("tiny_model_dir"))
    env.root.mkdir()
    monkeypatch.chdir(env.root)
    monkeypatch.setenv("VERIPO_THREADS", "1")
    try:
        args = case.setup(env)
        before = _hashes(env.root)
        if case.patch is not None:
            case.patch(monkeypatch, env)
        if case.run is not None:
            code, output = case.run(env, args)
            result = None
        else:
            result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
            code, output = result.exit_code, result.output
            assert result.exception is None or isinstance(result.exception, SystemExit), output
        assert "Traceback" not in output, output
        assert code == case.code, f"exit code {code}, expected {case.code}:\n{output}"
        flat = " ".join(output.split())  # messages may wrap
        for fragment in case.says:
            assert fragment in output or fragment in flat, f"{fragment!r} not in:\n{output}"
        after = _hashes(env.root)
        changed = [n for n, h in before.items() if after.get(n) != h and not _allowed(n, case.may_change)]
        assert not changed, f"changed or removed: {changed}"
        if case.code != 0:
            created = [n for n in after if n not in before and not _allowed(n, case.may_change)]
            assert not created, f"a failing command created {created}"
        if case.check is not None:
            case.check(env, result)
    finally:
        if "fd" in env.notes:
            os.close(env.notes["fd"])
        if "close" in env.notes:
            env.notes["close"]()
