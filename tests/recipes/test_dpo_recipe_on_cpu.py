"""The DPO recipe on video pairs: reference log-probs computed once, the margin grows, the policy learns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.records import Pair, reference_completion
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow


def test_dpo_stage_raises_margin_on_video_pairs(tmp_path: Path):
    data = make_synthetic(tmp_path / "data", n=6, seed=5, kinds=("video",), size=56, frames=(4, 4))
    samples = load_samples(data).samples
    pairs_path = tmp_path / "pairs.jsonl"
    with JsonlWriter(pairs_path) as w:
        for s in samples:  # chosen: the reference chain; rejected: the same chain concluding a wrong answer
            wrong = next(o[0] for o in s.options if o[0] != s.answer) if s.options else s.answer + "0"
            w.write(Pair(id=f"{s.id}/p", sample_id=s.id, pair_type="consistency", chosen=reference_completion(s),
                         rejected=f"<think>{s.reasoning}</think><answer>{wrong}</answer>", reasons=["test"]))
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu",
        "media.max_frames=4", "media.max_pixels=3136", "dpo.lr=5e-3", "dpo.global_batch_size=3", "dpo.epochs=8",
        "dpo.beta=0.1",
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="dpo", kind="dpo"),))
    root = run(cfg, inputs={"pairs": pairs_path}, show_progress=False).root

    stage = root / "stages" / "00-dpo"
    reference = json.loads((stage / "reference_logps.json").read_text())
    assert set(reference) == {f"{s.id}/p" for s in samples}
    rows = read_jsonl(stage / "metrics.jsonl")
    assert len(rows) == 16  # 6 pairs / 3 per step x 8 epochs
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its own reference

    def epoch_mean(epoch: int, key: str) -> float:  # each epoch's two steps see all six pairs once
        values = [r[key] for r in rows if r["epoch"] == epoch]
        return sum(values) / len(values)

    # a random tiny model learns to prefer the right answer after its own chain for most pairs
    assert epoch_mean(7, "margin") > 0.2 and epoch_mean(7, "pair_accuracy") > 0.8  # 5 of 6
    assert epoch_mean(7, "loss") < epoch_mean(0, "loss") - 0.1
    summary = json.loads((root / "summary.json").read_text())
    assert summary["stages"][0]["pairs"] == 6

