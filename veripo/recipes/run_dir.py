"""The run directory: config snapshot, state file, one folder per stage, summary (docs/run-directory.md).

Every write here is atomic (write a temporary file, fsync, rename), so a kill at any moment leaves either
the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veripo.errors import RunStateError


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
        raise RunStateError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); this run file is corrupt") from None
    except UnicodeDecodeError as e:
        raise RunStateError(f"{path}: not valid UTF-8 (byte {e.start}); this run file is corrupt") from None


def _state_problem(state: Any) -> str | None:
    """What is wrong with a ``state.json``'s shape, or None."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    completed = state.get("completed", [])
    if not isinstance(completed, list):
        return "field 'completed': expected a list of finished stages"
    for i, entry in enumerate(completed):
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int) or isinstance(entry.get("index"), bool):
            return f"field 'completed' entry {i}: expected an object with an integer 'index'"
        if not isinstance(entry.get("outputs", {}), dict) or not isinstance(entry.get("global_step", 0), int):
            return f"field 'completed' entry {i}: 'outputs' must be an object and 'global_step' an integer"
    if not isinstance(state.get("inputs", {}), dict):
        return "field 'inputs': expected an object"
    return None


def config_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_drift(state: dict[str, Any], text: str, config_path: Path) -> str | None:
    """The unified diff between the config a run started with (kept in ``state['config']``) and ``text`` (its
    ``config.yaml`` now), or None when they are the same or the run predates the record."""
    recorded = state.get("config")
    if not isinstance(recorded, dict) or recorded.get("sha256") == config_sha256(text):
        return None
    before = str(recorded.get("text", ""))
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), text.splitlines(keepends=True),
                                        f"{config_path} (when the run started)", f"{config_path} (now)"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "stage"


@dataclass
class RunDir:
    """A run's folder. ``stage_dir(i, name)`` is ``stages/<ii>-<name>``."""

    root: Path
    _lock_fd: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> "RunDir":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir).resolve()  # absolute: the state file's paths must not depend on the cwd
        if base.exists() and not base.is_dir():
            raise RunStateError(f"output_dir {base}: exists and is not a folder; set output_dir to a folder")
        base.mkdir(parents=True, exist_ok=True)
        if not os.access(base, os.W_OK | os.X_OK):
            raise RunStateError(f"output_dir {base}: cannot write into this folder (permission denied)")
        n = 1
        while True:  # mkdir without exist_ok claims the name: two runs started in the same second get two folders
            root = base / (f"{_slug(name)}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                root.mkdir()
                return cls(root)
            except FileExistsError:
                n += 1

    @classmethod
    def open_existing(cls, path: str | Path) -> "RunDir":
        """A run directory to resume; RunStateError when ``path`` is not one."""
        root = Path(path).resolve()
        if not root.is_dir():
            raise RunStateError(f"--resume {root}: no such run directory")
        if not (root / "config.yaml").is_file():
            raise RunStateError(f"--resume {root}: not a veripo run directory (no config.yaml); pass the folder "
                                "`veripo run` printed")
        return cls(root)

    def lock(self) -> None:
        """Hold an exclusive lock on the run for this process's life: a second process running into the same
        run directory (two ``--resume`` at once) would interleave its writes with ours."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunStateError(f"{self.root}: another veripo process (pid {holder}) is running in this run "
                                "directory; wait for it to end or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd  # released by unlock or when the process ends (also on kill -9)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

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

    def stage_path(self, index: int, name: str) -> Path:
        """Where stage ``index`` keeps its files (not created)."""
        return self.root / "stages" / f"{index:02d}-{_slug(name)}"

    def stage_dir(self, index: int, name: str) -> Path:
        path = self.stage_path(index, name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read_state(self) -> dict[str, Any]:
        """``state.json`` (finished stages, the current one, the config's hash); RunStateError when it is not
        readable or not shaped as veripo writes it."""
        state = read_json(self.state_path, default={"completed": [], "current": None})
        problem = _state_problem(state)
        if problem:
            raise RunStateError(f"{self.state_path}: corrupt run state: {problem}; the run cannot be resumed from it")
        return state

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
