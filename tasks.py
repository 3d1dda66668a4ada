#!/usr/bin/env python3
"""The README's two commands, and the one that moves the tested dependency set forward.

    python3 tasks.py demo [overrides]      the VerIPO demo (tiny model, CPU)
    python3 tasks.py test [--fast] [args]  the whole test suite (--fast: the edit-test subset), one pytest-xdist
                                           worker per core (VERIPO_TEST_WORKERS); args go to pytest
    python3 tasks.py lock                  resolve the newest versions pyproject.toml allows, run the whole
                                           suite on them, and rewrite requirements/lock.txt only if it passes
                                           (torch stays at the lock's release; VERIPO_TORCH_SPEC moves it)

``demo`` and ``test`` create (or reuse) ``.venv`` next to this file and install into it exactly the versions
in ``requirements/lock.txt`` (again whenever the lock or ``pyproject.toml`` changes; packages the lock no
longer lists are removed), so what CI tested is what a user gets. Only Python 3.11+ and pip are assumed.

torch comes first, from ``VERIPO_TORCH_SPEC`` (default: the lock's ``torch==...``, which on these machines is
the CPU wheel on disk); a torch already importable in ``.venv`` is kept, so a GPU user may put their own
CUDA build there. DeepSpeed (test command only) has no wheel on PyPI: it is built from its locked source
without build isolation and without its compiled ops (``DS_BUILD_OPS=0``; ZeRO-3 on CPU uses none of them).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "lock.txt"
LOCK_VENV = ROOT / ".venv-lock"  # the lock command's scratch environment, removed when it ends
STAMP_NAME = ".veripo-installed"
# Packages installed by their own step, not from the lock's requirement list.
SEPARATE = ("torch", "deepspeed")
# What `pip freeze` leaves out, and so the lock too (the venv's own installer).
UNLOCKED = ("pip",)
# pytest's selection for `test --fast`: everything not marked slow (see pyproject.toml's markers).
FAST_SELECTION = ["-m", "not slow"]


def python_in(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd: str | os.PathLike, env: dict | None = None) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def pip(py: Path, *args: str, env: dict | None = None) -> None:
    run(py, "-m", "pip", "install", "--disable-pip-version-check", *args, env=env)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` from a lock file's ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def installed(py: Path) -> dict[str, str]:
    """``{canonical name: version}`` as ``pip freeze --all`` reports it, less pip and the editable veripo."""
    out = subprocess.run([str(py), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith(("-e", "#")):
            name, _, version = line.partition("==")
            if canonical(name) not in UNLOCKED:
                pins[canonical(name)] = version.strip()
    return pins


def torch_spec(pins: dict[str, str]) -> str:
    return os.environ.get("VERIPO_TORCH_SPEC") or f"torch=={pins['torch']}"


def create_venv(path: Path) -> Path:
    if not python_in(path).exists():
        print(f"creating virtual environment {path}", flush=True)
        venv.EnvBuilder(with_pip=True).create(path)
    return python_in(path)


def install_torch(py: Path, spec: str) -> None:
    if subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0:
        pip(py, spec)


def ensure_env(with_deepspeed: bool) -> Path:
    """``.venv`` holding exactly the lock's versions (DeepSpeed only when asked for)."""
    py = create_venv(VENV)
    pins = read_lock()
    want = hashlib.sha256(b"".join(p.read_bytes() for p in (ROOT / "pyproject.toml", LOCK))
                          + torch_spec(pins).encode() + str(with_deepspeed).encode()).hexdigest()
    stamp = VENV / STAMP_NAME
    if stamp.exists() and stamp.read_text().strip() == want:
        return py
    install_torch(py, torch_spec(pins))
    requirements = VENV / "lock-requirements.txt"
    requirements.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items()) if n not in SEPARATE))
    pip(py, "-r", str(requirements))
    pip(py, "--no-deps", "-e", ".")  # every dependency of veripo and its test extra is in the lock
    if with_deepspeed:
        install_deepspeed(py, f"deepspeed=={pins['deepspeed']}")
    stale = set(installed(py)) - set(pins) - {"veripo"}
    if not with_deepspeed:
        stale.discard("deepspeed")  # the demo leaves a DeepSpeed the test command built where it is
    if stale:  # the lock moved on and no longer lists these
        run(py, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *sorted(stale))
    stamp.write_text(want)
    return py


def install_deepspeed(py: Path, spec: str, no_deps: bool = True) -> None:
    """DeepSpeed's source build runs in this env (no build isolation), with its setuptools (a torch dependency,
    so in the lock)."""
    print("+ DS_BUILD_OPS=0", flush=True)
    pip(py, "--no-build-isolation", *(["--no-deps"] if no_deps else []), spec,
        env=dict(os.environ, DS_BUILD_OPS="0"))


def test_workers(args: list[str]) -> list[str]:
    """pytest-xdist's options: one worker per core (tests run single-threaded, ``tests/conftest.py``), taking
    tests from each other as they finish (``worksteal``: a few tiny-model runs take a minute each).
    ``VERIPO_TEST_WORKERS`` sets the count (0: in this process); ``-n`` among the args wins."""
    if any(a in ("-n", "--numprocesses") or a.startswith(("-n=", "--numprocesses=")) or
           (a.startswith("-n") and a[2:].isdigit()) for a in args):
        return []
    return ["-n", os.environ.get("VERIPO_TEST_WORKERS", "auto"), "--dist", "worksteal"]


def pytest(py: Path, args: list[str], lock_file: Path) -> int:
    # VERIPO_LOCK_FILE lets tests/test_environment.py check that what is installed is what the lock says.
    env = dict(os.environ, PYTHONUNBUFFERED="1", VERIPO_LOCK_FILE=str(lock_file))
    cmd = [str(py), "-m", "pytest", *test_workers(args), *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def lock() -> int:
    """Newest versions within pyproject.toml's ranges; the whole suite on them; the lock rewritten if it passes."""
    import tomllib  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deepspeed_range = project["optional-dependencies"]["deepspeed"][0]
    shutil.rmtree(LOCK_VENV, ignore_errors=True)
    py = create_venv(LOCK_VENV)
    old = read_lock() if LOCK.exists() else {}
    # torch stays at the locked release unless VERIPO_TORCH_SPEC names another: an unpinned torch from the
    # index is a multi-GB CUDA build, and which torch to test on is a choice, not whatever is newest.
    install_torch(py, torch_spec(old) if old else os.environ.get("VERIPO_TORCH_SPEC", "torch"))
    pip(py, "--upgrade", "-e", ".[test]")
    install_deepspeed(py, deepspeed_range, no_deps=False)
    new = installed(py)
    new.pop("veripo", None)
    if "+" in new["torch"]:  # a local build label (+cpu, +cu128): the lock records the release it tested
        new["torch"] = new["torch"].split("+", 1)[0]
    candidate = LOCK_VENV / "lock.txt"
    candidate.write_text(render_lock(new, note="candidate, not yet tested"))
    started = time.monotonic()
    rc = pytest(py, [], candidate)
    minutes = (time.monotonic() - started) / 60
    changes = lock_changes(old, new)
    print("\n".join(["lock: changes against requirements/lock.txt:", *changes] if changes
                     else ["lock: no version changed"]))
    if rc != 0:
        print(f"lock: the suite failed on these versions (pytest exit {rc}, {minutes:.1f} min); "
              f"{LOCK.relative_to(ROOT)} is unchanged. Fix the code, not the versions.")
        return rc
    LOCK.parent.mkdir(exist_ok=True)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    LOCK.write_text(render_lock(new, note=f"the whole suite passed on these versions on {when} "
                                          f"({minutes:.1f} min, Python {sys.version.split()[0]})"))
    shutil.rmtree(LOCK_VENV, ignore_errors=True)
    print(f"lock: the suite passed ({minutes:.1f} min); wrote {LOCK.relative_to(ROOT)} "
          f"({len(new)} packages). The next demo/test command syncs .venv to it.")
    return 0


def lock_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            lines.append(f"  {name}: {old.get(name, '(absent)')} -> {new.get(name, '(removed)')}")
    return lines


def render_lock(pins: dict[str, str], note: str) -> str:
    header = f"""\
# veripo's tested environment: the exact versions `python3 tasks.py demo` and `python3 tasks.py test` install.
# Written by `python3 tasks.py lock`: {note}.
# Do not edit by hand: move it forward with that command, which resolves the newest versions pyproject.toml
# allows and runs the whole suite on them.
# torch: installed first from VERIPO_TORCH_SPEC (default: the version below; on the CPU machines the CPU wheel
#   on disk, torch==X+cpu); a GPU user may put their own CUDA build of it into .venv before the first command.
# deepspeed: test command only, built from source (--no-build-isolation, DS_BUILD_OPS=0).
# setuptools: torch needs it, and DeepSpeed's source build runs with it.
"""
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lock"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "lock":
        return lock()
    py = ensure_env(with_deepspeed=what == "test")
    if what == "demo":
        cmd = [str(py), "-m", "veripo", "demo", *rest]
        print("+", " ".join(cmd), flush=True)
        return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    if rest[:1] == ["--fast"]:
        rest = [*FAST_SELECTION, *rest[1:]]
    return pytest(py, rest, LOCK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
