"""A config that trains from a parquet dataset runs: the real Video-R1 training rows (../shared/data, with their
videos and images) written as parquet under other column names, streamed through the column mapping, train
the tiny model through GRPO; the row whose video is missing is a counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import veripo.recipes.veripo as veripo_recipe
from veripo.config import RunConfig, build
from veripo.data.jsonl import read_jsonl

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")

pytestmark = pytest.mark.slow
COLUMNS = {"problem": "question", "solution": "target", "video": "clip", "image": "picture"}


def test_a_run_trains_from_a_streamed_parquet_dataset(shared_data: Path, tiny_model_dir: Path, tmp_path: Path):
    real = shared_data / "real" / "videor1_samples"
    rows = json.loads((real / "sample_data.json").read_text())
    keys = {k for row in rows for k in row}  # from_pylist takes its columns from the first row alone
    renamed = [{COLUMNS.get(k, k): row.get(k) for k in sorted(keys)} for row in rows]
    pq.write_table(pa.Table.from_pylist(renamed), tmp_path / "videor1.parquet")
    cfg = build(RunConfig, {
        "name": "parquet", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "media": {"max_frames": 4, "max_pixels": 3136},
        "rollout": {"num_generations": 2, "max_new_tokens": 8},
        "data": [{"path": str(tmp_path / "videor1.parquet"), "name": "videor1", "media_root": str(real),
                  "columns": {field: column for field, column in COLUMNS.items()}, "streaming": True}],
        "grpo": {"rollout_batch_size": 2, "global_batch_size": 4, "rollout_batches": 2},
        "iterations": 0,
        "stages": [{"name": "grpo", "kind": "grpo"}],  # SFT would need reference chains, which these rows lack
    })
    root = veripo_recipe.run(cfg, show_progress=False).root
    state = json.loads((root / "state.json").read_text())
    assert [(s["name"], s["steps"]) for s in state["completed"]] == [("grpo", 2)]
    rollouts = read_jsonl(root / "stages" / "00-grpo" / "rollouts.jsonl")
    # the 4 usable rows of 5 (split_8.mp4 is missing), each sampled twice, the videos and images decoded
    assert len(rollouts) == 8
    questions = {r["sample_id"] for r in rollouts}
    assert questions == {f"videor1:{i}" for i in (0, 2, 3, 4)}
