"""Sample ids cannot collide: two data files with the same name in different folders get ids named by their
folders (ids that did not collide keep their old form, so existing runs resume and seeded results stay), a
numbered duplicate id that equals a real id is an error, and a run skips (and counts) the questions it cannot
use, up to ``max_bad_share``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from veripo.config import RunConfig, load
from veripo.data.loaders import DataError, load_samples
from veripo.data.media import MediaError
from veripo.recipes.run_dir import RunDir
from veripo.recipes.sources import SampleStore, drop_unusable, source_names

ROOT = Path(__file__).resolve().parents[2]
ROW = {"problem_type": "numerical", "data_type": "text"}


def _file(path: Path, answers: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**ROW, "problem_id": i, "problem": f"q{i} of {path.parent.name}",
                                 "solution": f"<answer>{a}</answer>"} for i, a in enumerate(answers)]))
    return path


def test_same_file_name_in_two_folders_gets_ids_that_cannot_collide(tmp_path):
    a, b = _file(tmp_path / "a" / "train.json", ["1", "2"]), _file(tmp_path / "b" / "train.json", ["7", "8"])
    # what the loader alone does: the same ids for different questions (the bug a run used to train on)
    assert [s.id for s in load_samples(a).samples] == [s.id for s in load_samples(b).samples] == ["train:0", "train:1"]
    cfg = load(RunConfig, None, [f"data=[{{path: {a}}}, {{path: {b}}}]"])
    store = SampleStore(cfg, RunDir(tmp_path / "run"), Console(stderr=True))
    for source in cfg.data:
        store.load(source)
    by_id = {s.id: s for s in store.all_samples()}
    assert sorted(by_id) == ["a/train:0", "a/train:1", "b/train:0", "b/train:1"]
    assert by_id["a/train:1"].answer == "2" and by_id["b/train:1"].answer == "8"


def test_names_keep_the_old_form_unless_they_collide():
    names = source_names([Path("/r/x/train.json"), Path("/r/heldout/dataset.json"), Path("/r/y/train.json"),
                          Path("/r/y/train.jsonl"), Path("/r/z/other.json")])
    assert names[Path("/r/heldout/dataset.json")] == "heldout" and names[Path("/r/z/other.json")] == "other"
    assert len({names[Path(p)] for p in ("/r/x/train.json", "/r/y/train.json", "/r/y/train.jsonl")}) == 3


def test_the_demo_keeps_its_ids(tmp_path):
    cfg = load(RunConfig, ROOT / "configs" / "demo.yaml")
    store = SampleStore(cfg, RunDir(tmp_path / "demo-run"), Console(stderr=True))
    sources = (*cfg.data, *cfg.eval.heldout, *(d for s in (*cfg.stages, *cfg.loop) for d in s.data))
    for source in sources:  # the name load_samples gives a dataset folder by default: its folder's name
        assert store._names[store.dataset_file(source)] == Path(source.path).name


def test_sources_whose_records_carry_the_same_ids_are_refused(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": "q1", "problem": name, "problem_type": "numerical",
                                                             "answer": "1"}) + "\n")
    cfg = load(RunConfig, None, [f"data=[{{path: {tmp_path / 'one.jsonl'}}}, {{path: {tmp_path / 'two.jsonl'}}}]"])
    store = SampleStore(cfg, RunDir(tmp_path / "run"), Console(stderr=True))
    store.load(cfg.data[0])
    with pytest.raises(DataError, match="'q1' is also the id of a sample in .*one.jsonl"):
        store.load(cfg.data[1])


def test_numbered_duplicates_keep_their_form_and_refuse_a_collision(tmp_path):
    path = tmp_path / "d.json"
    rows = [{**ROW, "problem_id": "x", "problem": f"q{i}", "solution": "<answer>1</answer>"} for i in range(3)]
    path.write_text(json.dumps(rows))
    assert [s.id for s in load_samples(path).samples] == ["d:x", "d:x#2", "d:x#3"]
    rows[2]["problem_id"] = "x#2"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"record 1: field 'id'.*'d:x#2' is the id of record 2"):
        load_samples(path)


def test_unusable_questions_are_skipped_counted_and_capped(tmp_path):
    cfg = load(RunConfig, None, [])
    samples = [s for s in _samples(tmp_path, 10)]

    def encode(sample):
        if sample.id.endswith((":3", ":7")):
            raise MediaError(f"{sample.id}.mp4: cannot decode video")
        return {}

    logged: list[str] = []
    kept = drop_unusable(samples, encode, stage="s", max_share=0.2, log=logged.append, record=tmp_path / "skipped.jsonl")
    assert [s.id for s in kept] == [s.id for s in samples if not s.id.endswith((":3", ":7"))]
    rows = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()[1:]]
    assert [r["sample_id"] for r in rows] == ["d:3", "d:7"] and "cannot decode" in rows[0]["reason"]
    assert any("2 of 10 questions skipped" in m for m in logged)
    with pytest.raises(DataError, match="2 of 10 questions cannot be used.*max_bad_share 0.1"):
        drop_unusable(samples, encode, stage="s", max_share=0.1, log=logged.append)
    assert cfg.max_bad_share == 0.05


def _samples(tmp_path: Path, n: int):
    return load_samples(_file(tmp_path / "data" / "d.json", [str(i) for i in range(n)]), source="d").samples
