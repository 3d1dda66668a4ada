"""What a hostile-input case works in: a folder of its own, helpers that write the inputs, the tiny model.

Inputs are written the way a careless or hostile user would leave them; the run directories are written
with veripo's own state format (``veripo.recipes.run_dir``) so a case tests what resume does with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from veripo.data.jsonl import JsonlWriter
from veripo.recipes.run_dir import config_sha256

TEXT_SAMPLE = {"problem": "How many apples are there if you add 2 and 3?", "problem_type": "numerical",
               "solution": "<answer>5</answer>", "data_type": "text", "process": "<think>2 + 3 = 5.</think>"}
DONE = "<think>Two plus three is five.</think><answer>{}</answer>"


@dataclass
class Env:
    """One case's folder (``root``) and lazy access to the session's tiny model."""

    root: Path
    model_dir: Callable[[], Path]
    notes: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def write_json(self, name: str, data: Any) -> Path:
        return self.write(name, json.dumps(data))

    def write_jsonl(self, name: str, rows: list[dict[str, Any]], kind: str | None = None) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with JsonlWriter(path, kind=kind) as writer:
            writer.write_many(rows)
        return path

    def samples(self, name: str = "samples.json", n: int = 4, **extra: Any) -> Path:
        """A Video-R1-format file of ``n`` text questions with reference chains (SFT can train on them)."""
        return self.write_json(name, [{**TEXT_SAMPLE, "problem_id": i, **extra} for i in range(n)])

    def config(self, body: str = "", name: str = "config.yaml", model: bool = False, model_keys: str = "") -> Path:
        """A run config writing under ``runs/``; ``model``: start from the tiny model (else build_tiny, which a
        case that must fail before loading anything never reaches); ``model_keys``: more ``model`` keys."""
        head = f"output_dir: {self.root / 'runs'}\nseed: 0\n"
        where = f"path: {self.model_dir()}" if model else "build_tiny: tiny"
        head += f"model: {{{where}, device: cpu{', ' + model_keys if model_keys else ''}}}\n"
        return self.write(name, head + body)

    def run_dir(self, config_text: str, completed: list[dict[str, Any]] = (), name: str = "run") -> Path:
        """A run directory as ``veripo run`` leaves it: config.yaml and a state.json recording the config's
        hash and the ``completed`` stages."""
        root = self.root / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(config_text, encoding="utf-8")
        state = {"completed": list(completed), "current": None,
                 "config": {"sha256": config_sha256(config_text), "text": config_text}}
        (root / "state.json").write_text(json.dumps(state), encoding="utf-8")
        return root

    def rollouts(self, name: str = "rollouts.jsonl", texts: tuple[str | None, ...] = ("5", "6"),
                 ids: tuple[str, ...] | None = None, with_samples: bool = True) -> Path:
        """A rollouts file of one question's group (and its samples.jsonl beside it)."""
        ids = ids or tuple(f"q/0/{i}" for i in range(len(texts)))
        rows = [{"id": rid, "sample_id": "q", "group_index": i, "text": DONE.format(t) if t is not None else None}
                for i, (rid, t) in enumerate(zip(ids, texts))]
        path = self.write_jsonl(name, rows, kind="rollout")
        if with_samples:
            self.write_jsonl(str(Path(name).parent / "samples.jsonl"),
                             [{"id": "q", "problem": "2 + 3?", "problem_type": "numerical", "answer": "5"}],
                             kind="sample")
        return path
