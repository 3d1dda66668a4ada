"""The installed environment is the locked one, and tasks.py reads and writes its lock file faithfully."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tasks():
    spec = importlib.util.spec_from_file_location("veripo_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tasks = load_tasks()


def test_installed_packages_are_exactly_the_lock():
    lock_file = os.environ.get("VERIPO_LOCK_FILE")
    if not lock_file:
        pytest.skip("run through `python3 tasks.py test`, which installs requirements/lock.txt and names it")
    locked = tasks.read_lock(Path(lock_file))
    have = tasks.installed(Path(sys.executable))
    have.pop("veripo", None)
    have["torch"] = have["torch"].split("+", 1)[0]  # the CPU wheel's local label (+cpu) is how torch is obtained
    if os.environ.get("VERIPO_TORCH_SPEC"):  # the user brought their own torch
        locked.pop("torch"), have.pop("torch")
    differences = tasks.lock_changes(locked, have)
    assert not differences, "installed (right) is not the lock (left):\n" + "\n".join(differences)


def test_lock_round_trips_and_changes_are_listed(tmp_path):
    pins = {"torch": "2.13.0", "transformers": "5.25.0", "ruamel-yaml": "0.18.1"}
    path = tmp_path / "lock.txt"
    path.write_text(tasks.render_lock(pins, note="test"))
    assert tasks.read_lock(path) == pins
    assert path.read_text().splitlines()[0].startswith("# veripo's tested environment")
    assert tasks.lock_changes(pins, {**pins, "transformers": "5.26.0", "new-pkg": "1.0"}) == [
        "  new-pkg: (absent) -> 1.0", "  transformers: 5.25.0 -> 5.26.0"]
    assert tasks.canonical("Ruamel_YAML.clib") == "ruamel-yaml-clib"


def test_the_shipped_lock_covers_what_tasks_py_installs_separately():
    pins = tasks.read_lock(tasks.LOCK)
    assert {"torch", "deepspeed", "transformers", "pytest"} <= set(pins)
    assert all(version and "+" not in version for version in pins.values()), pins


@pytest.mark.parametrize(("args", "added"), [
    ([], ["-n", "auto", "--dist", "worksteal"]),
    (["-m", "not slow", "tests/config"], ["-n", "auto", "--dist", "worksteal"]),
    (["-n", "0"], []), (["-n3"], []), (["--numprocesses=4"], []), (["-n=2", "-x"], []),
])
def test_the_test_command_runs_one_worker_per_core_unless_told(monkeypatch, args, added):
    monkeypatch.delenv("VERIPO_TEST_WORKERS", raising=False)
    assert tasks.test_workers(args) == added
    monkeypatch.setenv("VERIPO_TEST_WORKERS", "0")
    assert tasks.test_workers(args) == (["-n", "0", "--dist", "worksteal"] if added else [])
