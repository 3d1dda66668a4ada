"""Synthetic run directories that follow docs/run-directory.md: a VerIPO run (sft -> grpo -> verify -> dpo
-> grpo -> verify -> dpo) and a GRPO-only run, with metrics rows shaped like the recipes write them."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from veripo.data.jsonl import header_line

VERIPO_STAGES = [("sft", "sft", 12), ("grpo-activation", "grpo", 30), ("verify", "verify", 0), ("dpo", "dpo", 8),
                 ("grpo-video", "grpo", 24), ("verify-2", "verify", 0), ("dpo-2", "dpo", 8)]
GRPO_ONLY_STAGES = [("sft", "sft", 12), ("grpo-activation", "grpo", 30), ("grpo-video", "grpo", 40)]


def _row(kind: str, name: str, step: int, global_step: int, rng: random.Random, progress: float) -> dict[str, Any]:
    row = {"stage": name, "kind": kind, "step": step, "global_step": global_step, "lr": 1e-6,
           "loss": round(1.5 * math.exp(-progress) + rng.uniform(0, 0.1), 4), "grad_norm": rng.uniform(0.2, 2.0),
           "time_s": round(2.5 * step, 2)}
    if kind == "sft":
        row["tokens"] = 4096
    if kind == "grpo":
        row.update(reward_mean=0.3 + 0.6 * progress, accuracy_mean=min(1.0, max(0.0, 0.25 + 0.5 * progress + rng.uniform(-0.1, 0.1))),
                   format_rate=0.8, response_len=120 + 60 * progress + rng.uniform(-10, 10),
                   thinking_len=80 + 50 * progress + rng.uniform(-8, 8), kl=0.01 * progress, clip_frac=0.02,
                   entropy=1.2)
    if kind == "dpo":
        speed = rng.uniform(0.2, 0.4)
        row.update(loss=0.69 - speed * progress, chosen_reward=0.1 * progress, rejected_reward=-0.2 * progress,
                   margin=speed * progress, pair_accuracy=0.5 + 0.4 * progress)
    return row


def build_run(root: Path, stages: list[tuple[str, str, int]], seed: int = 0) -> Path:
    """Write a complete run directory under ``root`` and return it."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(
        "name: demo\nseed: 0\nstages:\n" + "".join(f"- name: {n}\n  kind: {k}\n" for n, k, _ in stages), encoding="utf-8")
    (root / "state.json").write_text(json.dumps({"completed": [n for n, _, _ in stages], "current": None}))
    summary: dict[str, Any] = {"run": root.name, "stages": []}
    global_step, accuracy, inconsistency = 0, 0.30, 0.10
    for index, (name, kind, steps) in enumerate(stages):
        folder = root / "stages" / f"{index:02d}-{name}"
        folder.mkdir(parents=True)
        rows = []
        for step in range(1, steps + 1):
            global_step += 1
            rows.append(_row(kind, name, step, global_step, rng, step / max(steps, 1)))
        if rows:
            lines = [header_line("metrics")] + rows  # the header veripo.data.jsonl.JsonlWriter starts files with
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
        accuracy += {"grpo": 0.08, "dpo": 0.02, "sft": 0.03}.get(kind, 0.0)
        inconsistency *= {"grpo": 1.5, "dpo": 0.5}.get(kind, 1.0)
        entry: dict[str, Any] = {"name": name, "kind": kind, "index": index,
                                 "wall_time_s": 2.5 * steps * (4 if kind == "grpo" else 1) or 3.0}
        if kind == "verify":
            pairs = {"consistency": 5 + index, "penalty": 9, "reflective": 2}
            entry.update(pairs=pairs, inconsistency_rate=round(inconsistency, 4))
            (folder / "verify_summary.json").write_text(json.dumps(
                {"pairs": pairs, "inconsistency_rate": inconsistency, "failed_checks": {"format": 3, "repetition": 1}}))
        else:
            entry["eval"] = {
                "heldout": {"accuracy": round(accuracy, 4), "response_len": 100.0 + 10 * index, "thinking_len": 70.0 + 8 * index,
                            "inconsistency_rate": round(inconsistency, 4), "n": 64,
                            "by_type": {"multiple choice": round(accuracy + 0.05, 4), "numerical": round(accuracy - 0.05, 4)},
                            "by_task": {"colour_change": round(accuracy + 0.1, 4), "count": round(accuracy - 0.1, 4)}},
                "tomato": {"accuracy": round(accuracy - 0.1, 4), "inconsistency_rate": round(inconsistency * 1.2, 4), "n": 32},
            }
        summary["stages"].append(entry)
    (root / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return root
