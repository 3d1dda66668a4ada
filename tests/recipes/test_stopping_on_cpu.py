"""Stopping cleanly: SIGTERM during a training stage saves a checkpoint and stops (``Stopped``), and the resumed
run ends bit-identical to one never stopped; ``save_every_s`` checkpoints by the clock as well as every N units.
(The real-process version, exit code 143 included, is the corpus case ``sigterm-mid-training-saves-and-resumes``.)
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from veripo.config import RunConfig, load
from veripo.errors import Stopped

pytestmark = pytest.mark.slow

SAMPLE = {"problem": "How many apples are there if you add 2 and 3?", "problem_type": "numerical",
          "solution": "<answer>5</answer>", "data_type": "text", "process": "<think>2 + 3 = 5.</think>"}


def _config(tmp_path: Path, model_dir: Path, name: str, *overrides: str) -> RunConfig:
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{**SAMPLE, "problem_id": i, "problem": f"{SAMPLE['problem']} ({i})"} for i in range(8)]))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\noutput_dir: {tmp_path / 'runs'}\nseed: 5\nmodel: {{path: {model_dir}, device: cpu}}\n"
                    f"data: [{{path: {data}}}]\nsft: {{batch_size: 2, epochs: 1, lr: 1.0e-3, save_every: 1000}}\n"
                    "stages:\n  - {name: sft, kind: sft}\n")
    return load(RunConfig, path, list(overrides))


def _final(run: Path) -> tuple[dict, list[float]]:
    stage = run / "stages" / "00-sft"
    ckpt = stage / "checkpoints" / json.loads((stage / "latest.json").read_text())["checkpoint"]
    weights = {}
    for file in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(file))
    losses = [json.loads(line)["loss"] for line in (stage / "metrics.jsonl").read_text().splitlines()[1:]]
    return weights, losses


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_is_exact(tmp_path, tiny_model_dir, monkeypatch):
    from veripo.recipes.sft import SFTStage
    from veripo.recipes.veripo import run

    whole = run(_config(tmp_path, tiny_model_dir, "whole"), show_progress=False).root

    original = SFTStage.run_unit

    def signalled(self, unit, loop):  # SIGTERM arrives while unit 1 (of 4) runs
        out = original(self, unit, loop)
        if unit == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SFTStage, "run_unit", signalled)
    with pytest.raises(Stopped, match="saved a checkpoint after unit 2 of 4"):
        run(_config(tmp_path, tiny_model_dir, "stopped"), show_progress=False)
    monkeypatch.setattr(SFTStage, "run_unit", original)
    (stopped,) = (p for p in (tmp_path / "runs").iterdir() if p.name.startswith("stopped"))
    pointer = json.loads((stopped / "stages/00-sft/latest.json").read_text())["checkpoint"]
    progress = json.loads((stopped / "stages/00-sft/checkpoints" / pointer / "progress.json").read_text())
    assert progress["unit"] == 2 and not progress["done"]  # save_every 1000: only SIGTERM saved here
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the stage

    run(None, resume=stopped, show_progress=False)
    weights_whole, losses_whole = _final(whole)
    weights_resumed, losses_resumed = _final(stopped)
    assert losses_resumed == losses_whole and len(losses_whole) == 4
    assert weights_whole.keys() == weights_resumed.keys()
    assert all((weights_whole[k] == weights_resumed[k]).all() for k in weights_whole)


def test_save_every_s_checkpoints_by_the_clock(tmp_path, tiny_model_dir, monkeypatch):
    import veripo.recipes.stage_loop as stage_loop
    from veripo.recipes.veripo import run

    saved: list[int] = []
    original = stage_loop.save_checkpoint

    def counting(stage_dir, model, processor, optimizer, scheduler, progress, *args, **kwargs):
        saved.append(progress.unit)
        return original(stage_dir, model, processor, optimizer, scheduler, progress, *args, **kwargs)

    monkeypatch.setattr(stage_loop, "save_checkpoint", counting)
    run(_config(tmp_path, tiny_model_dir, "by-steps"), show_progress=False)
    assert saved == [4]  # save_every 1000: the last unit only
    saved.clear()
    run(_config(tmp_path, tiny_model_dir, "by-clock", "sft.save_every_s=1.0e-6"), show_progress=False)
    assert saved == [1, 2, 3, 4]  # every unit takes longer than a microsecond
