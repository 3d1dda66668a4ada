"""``eval.workers: 2`` in a run: the run starts a decode worker before its first stage, hands it every stage's
trained weights, writes the same held-out predictions as a one-process run, and stops the worker when it ends."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing

import pytest

from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow  # about 30 s: two short runs, one with a spawned worker


def test_a_run_with_a_decode_worker_writes_the_predictions_of_one_process(tmp_path):
    data = make_synthetic(tmp_path / "train", n=8, seed=5, kinds=("image",), size=56, frames=(4, 4), chain="brief")
    heldout = make_synthetic(tmp_path / "heldout", n=10, seed=6, kinds=("video",), size=56, frames=(4, 4),
                             chain="brief")
    predictions = {}
    for workers in (1, 2):
        cfg = load(RunConfig, None, [
            f"output_dir={tmp_path / f'runs{workers}'}", "model.build_tiny=tiny", "model.device=cpu",
            "media.max_frames=4", "media.max_pixels=3136", "sft.batch_size=4", "sft.epochs=1", "sft.lr=1e-3",
            "eval.max_new_tokens=12", "eval.batch_size=2", f"eval.workers={workers}"])
        cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),),
                                  eval=dataclasses.replace(cfg.eval, heldout=(DataSource(path=str(heldout),
                                                                                          name="heldout"),)),
                                  stages=(Stage(name="a", kind="sft"), Stage(name="b", kind="sft")))
        root = run(cfg, show_progress=False).root
        predictions[workers] = [
            [{k: v for k, v in json.loads(line).items() if k != "sample"}
             for line in (root / "stages" / stage / "eval" / "heldout" / "predictions.jsonl").read_text().splitlines()[1:]]
            for stage in ("00-a", "01-b")]
        assert not multiprocessing.active_children()  # the worker was stopped with the run
    assert len(predictions[1][0]) == 10
    assert predictions[1][0] != predictions[1][1]  # the second stage's weights changed the responses
    assert predictions[2] == predictions[1]
