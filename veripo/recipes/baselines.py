"""The baselines a VerIPO run is compared with, each built from a finished VerIPO run directory so that it
starts from the same warm start (the checkpoint of its SFT stage) and evaluates on the same held-out items:

- ``grpo_only_config(cfg, run, budget="time")``: GRPO alone on the union of the run's GRPO data, for the wall
  time VerIPO spent after the warm start (``veripo demo --compare``);
- ``grpo_only_config(cfg, run, budget="rollouts")``: the same for as many rollout groups as VerIPO's GRPO
  stages drew (reproducible, unlike wall time);
- ``sft_only_config(cfg, run)``: SFT on the reference chains of those same questions, as many samples as
  VerIPO's GRPO stages drew questions (the paper's question: does RL add anything over imitating the chains?).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Literal

from veripo.config import RunConfig, Stage


def _summary(veripo_run: Path) -> dict:
    return json.loads((veripo_run / "summary.json").read_text())


def questions_drawn(veripo_run: Path) -> int:
    """Questions (rollout groups) the run's GRPO stages drew, resampled ones included."""
    return sum(int(s.get("questions_drawn") or 0) for s in _summary(veripo_run)["stages"] if s["kind"] == "grpo")


def _baseline(cfg: RunConfig, veripo_run: Path, suffix: str, stage: Stage, **sections) -> RunConfig:
    """``cfg`` as a one-stage run from ``veripo_run``'s warm start on the GRPO stages' data, evaluated on its
    held-out items; synthetic sources are read from the VerIPO run's folder, not generated again."""
    veripo_run = veripo_run.resolve()  # the new run resolves relative data paths under its own folder
    summary = _summary(veripo_run)
    warm = [s for s in summary["stages"] if s["kind"] == "sft"]
    stages = list(cfg.stages) + list(cfg.loop)
    data = tuple({d.path: d for s in stages if s.kind == "grpo" for d in (s.data or cfg.data)}.values())
    model = cfg.model
    if warm:
        ckpt_dir = veripo_run / "stages" / f"{warm[-1]['index']:02d}-{warm[-1]['name']}"
        pointer = json.loads((ckpt_dir / "latest.json").read_text())["checkpoint"]
        model = dataclasses.replace(cfg.model, path=str(ckpt_dir / "checkpoints" / pointer))

    def reuse(sources):  # synthetic sources generated inside the VerIPO run are read from there
        return tuple(dataclasses.replace(d, path=str(veripo_run / "data" / d.path))
                     if d.synthetic and not Path(d.path).is_absolute() else d for d in sources)

    data, heldout = reuse(data), reuse(cfg.eval.heldout)
    # data: the GRPO sources only (the warm start's own data is neither needed nor regenerated)
    return dataclasses.replace(cfg, name=f"{cfg.name}-{suffix}", model=model, data=data,
                               stages=(dataclasses.replace(stage, data=data),), loop=(),
                               eval=dataclasses.replace(cfg.eval, heldout=heldout), **sections)


def grpo_only_config(cfg: RunConfig, veripo_run: Path, budget: Literal["time", "rollouts"] = "time") -> RunConfig:
    """GRPO alone, from the VerIPO run's warm start, on the union of its GRPO data, for the wall time VerIPO
    spent after the warm start (``budget="time"``) or for as many rollout groups as its GRPO stages drew."""
    grpo = cfg.grpo
    per_batch = grpo.rollout_batch_size * cfg.rollout.num_generations // grpo.global_batch_size
    if budget == "time":
        after_warm_start = sum(s["wall_time_s"] for s in _summary(veripo_run.resolve())["stages"] if s["kind"] != "sft")
        # the time budget ends the stage; the step cap (10,000 rollout batches) only has to be out of reach
        grpo = dataclasses.replace(grpo, epochs=None, max_steps=10_000 * per_batch, rollout_batches=None,
                                   time_budget_s=after_warm_start)
        suffix = "grpo-only"
    elif budget == "rollouts":
        batches = math.ceil(questions_drawn(veripo_run.resolve()) / grpo.rollout_batch_size)
        grpo = dataclasses.replace(grpo, epochs=None, max_steps=batches * per_batch, rollout_batches=None,
                                   time_budget_s=None)
        suffix = "grpo-only-rollouts"
    else:
        raise ValueError(f"budget {budget!r}: expected 'time' or 'rollouts'")
    return _baseline(cfg, veripo_run, suffix, Stage(name="grpo-only", kind="grpo"), grpo=grpo)


def sft_only_config(cfg: RunConfig, veripo_run: Path) -> RunConfig:
    """SFT alone, from the VerIPO run's warm start, on the reference chains of its GRPO questions: one sample
    for every question the GRPO stages drew (so as many question visits as VerIPO's rollout groups)."""
    steps = math.ceil(questions_drawn(veripo_run.resolve()) / cfg.sft.batch_size)
    sft = dataclasses.replace(cfg.sft, epochs=None, max_steps=max(1, steps))
    return _baseline(cfg, veripo_run, "sft-only", Stage(name="sft-only", kind="sft"), sft=sft)
