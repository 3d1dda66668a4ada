"""The ``bench/`` scripts imported as modules by their tests (a helper module: a second ``conftest`` would shadow
the one ``tests/models`` imports from)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_script(name: str) -> ModuleType:
    """``bench_script("gpu_smoke")``: the script ``bench/gpu_smoke.py`` imported as a module (once)."""
    if name not in sys.modules:  # dataclasses look their module up there
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
