#!/usr/bin/env python3
"""The README's two commands: ``python3 tasks.py demo`` and ``python3 tasks.py test``.

Each creates (or reuses) ``.venv`` next to this file, installs veripo and what it needs on first use
(again whenever ``pyproject.toml`` changes), then runs the demo or the whole test suite. Only Python 3.10+
and pip are assumed. Extra arguments are passed through (``python3 tasks.py test -k rewards``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".veripo-installed"
# The CPU wheel keeps a fresh machine off the multi-GB CUDA build; a GPU user installs into their own env.
TORCH = os.environ.get("VERIPO_TORCH_SPEC", "torch==2.13.0")
# The tests run DeepSpeed ZeRO-3 on CPU processes. PyPI has only its source; building it needs torch, so it
# is installed without build isolation and without its compiled ops (DS_BUILD_OPS=0), which ZeRO-3 does not use.
DEEPSPEED = "deepspeed==0.19.8"
DEEPSPEED_STAMP = VENV / ".veripo-deepspeed"


def run(*cmd: str | os.PathLike) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_env(extras: str) -> None:
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode() + TORCH.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    have_torch = subprocess.run([str(PY), "-c", "import torch"], capture_output=True).returncode == 0
    if not have_torch:
        run(PY, "-m", "pip", "install", "--disable-pip-version-check", TORCH)
    run(PY, "-m", "pip", "install", "--disable-pip-version-check", "-e", f".[{extras}]")
    STAMP.write_text(want)


def ensure_deepspeed() -> None:
    if DEEPSPEED_STAMP.exists() and DEEPSPEED_STAMP.read_text().strip() == DEEPSPEED:
        return
    run(PY, "-m", "pip", "install", "--disable-pip-version-check", "wheel", "setuptools")
    print("+ DS_BUILD_OPS=0", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", DEEPSPEED],
                   check=True, cwd=ROOT, env=dict(os.environ, DS_BUILD_OPS="0"))
    DEEPSPEED_STAMP.write_text(DEEPSPEED)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    ensure_env("test")
    if what == "test":
        ensure_deepspeed()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if what == "demo":
        cmd = [str(PY), "-m", "veripo", "demo", *rest]
    else:
        cmd = [str(PY), "-m", "pytest", *rest]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
