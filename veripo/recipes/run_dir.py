"""The run directory: config snapshot, state file, one folder per stage, summary (docs/run-directory.md).

Every write here is atomic (write a temporary file, fsync, rename), so a kill at any moment leaves either
the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "stage"


@dataclass
class RunDir:
    """A run's folder. ``stage_dir(i, name)`` is ``stages/<ii>-<name>``."""

    root: Path

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> "RunDir":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir).resolve()  # absolute: the state file's paths must not depend on the cwd
        root = base / f"{_slug(name)}-{stamp}"
        n = 1
        while root.exists():  # two runs started in the same second
            n += 1
            root = base / f"{_slug(name)}-{stamp}-{n}"
        root.mkdir(parents=True)
        return cls(root)

    def name_of(self, path: str | Path) -> str:
        """How ``state.json`` records a file: relative to the run root when inside it (the run directory can be
        moved or copied and resumed there), else absolute."""
        path, root = Path(path).resolve(), self.root.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def path_of(self, recorded: str) -> Path:
        """The file a ``state.json`` entry names (relative entries are under the run root)."""
        path = Path(recorded)
        return path if path.is_absolute() else self.root / path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    def stage_dir(self, index: int, name: str) -> Path:
        path = self.root / "stages" / f"{index:02d}-{_slug(name)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read_state(self) -> dict[str, Any]:
        return read_json(self.state_path, default={"completed": [], "current": None})

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def read_summary(self) -> dict[str, Any]:
        return read_json(self.summary_path, default={"run": self.root.name, "stages": []})

    def update_summary(self, stage_entry: dict[str, Any]) -> None:
        """Insert or replace the summary entry of one stage (keyed by its index)."""
        summary = self.read_summary()
        stages = [s for s in summary["stages"] if s.get("index") != stage_entry["index"]]
        stages.append(stage_entry)
        summary["stages"] = sorted(stages, key=lambda s: s["index"])
        atomic_write_json(self.summary_path, summary)
