"""The architecture holds: the layer contracts in pyproject.toml (import-linter), and what import-linter cannot
see: external imports of the maths layer, distribution types outside ``veripo.parallel``, bench -> tests."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "veripo"
# What only ``veripo/parallel`` may test for: a model's or optimizer's distribution type.
DISTRIBUTION_TYPES = {"DTensor", "FSDPModule", "ZeroRedundancyOptimizer", "DeepSpeedZero3", "DeepSpeedAdamW",
                      "LayerShardedAdamW", "DataParallel", "FullyShardedLayers", "DistributedDataParallel"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file, relative imports included as written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def test_the_layer_contracts_hold():
    pytest.importorskip("importlinter")
    # import-linter analyses the veripo that is importable: this tree's
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_the_maths_layer_imports_no_model_family_nor_distribution():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in sorted((PACKAGE / "algos").rglob("*.py")) for line, module in imported_modules(path)
           if module.startswith(("veripo.models", "veripo.parallel", "torch.distributed", "transformers",
                                 "deepspeed"))]
    assert not bad, bad


def test_no_distribution_type_checks_outside_parallel():
    """Recipes, checkpoints and models ask the strategy; only veripo/parallel looks at distribution types."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "parallel"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
                if names & DISTRIBUTION_TYPES:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} isinstance(..., {sorted(names & DISTRIBUTION_TYPES)})")
    assert not bad, bad


def test_nothing_is_glued_onto_the_model_object():
    """Strategies hold their state themselves (the model used to carry ``veripo_training_passes``)."""
    bad = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in sorted(PACKAGE.rglob("*.py"))
           for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
           if isinstance(node, ast.Attribute) and node.attr.startswith("veripo_") and isinstance(node.ctx, ast.Store)]
    assert not bad, bad


def test_bench_imports_nothing_from_tests():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in sorted((ROOT / "bench").rglob("*.py"))
           for line, module in imported_modules(path) if module == "tests" or module.startswith("tests.")
           or module.split(".")[0] in {"conftest", "dp_worker", "judge_servers", "scripted", "answers"}]
    assert not bad, bad


def test_the_checks_can_fail(tmp_path):
    """Negative control for the AST checks: a file that breaks each rule is caught."""
    sample = tmp_path / "bad.py"
    sample.write_text("import torch.distributed as dist\nfrom tests.parallel import dp_worker\n")
    assert [m for _, m in imported_modules(sample)] == ["torch.distributed", "tests.parallel.dp_worker"]
