"""Hugging Face datasets as data sources: parquet written from the real question files loads into the same
samples as the JSON it came from (as is, with renamed columns, streamed, from a save_to_disk folder);
streaming reads only what a limit needs and writes no Arrow cache; bad settings name the dataset and key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from veripo.data import hf_datasets  # noqa: E402
from veripo.data.hf_datasets import HfRows, is_hf_source  # noqa: E402
from veripo.data.loaders import DataError, load_samples  # noqa: E402

RENAMED = {"problem_id": "qid", "problem": "question", "options": "choices", "solution": "label",
           "path": "clip"}  # veripo field -> column of the renamed parquet


def _rows(shared_data: Path, name: str = "eval_mmvu.json") -> list[dict]:
    return json.loads((shared_data / "real" / "eval_questions" / name).read_text())


def _write_parquet(rows: list[dict], path: Path, rename: dict[str, str] | None = None) -> Path:
    rename = rename or {}
    keys = {k for row in rows for k in row}  # from_pylist takes its columns from the first row alone
    renamed = [{rename.get(k, k): row.get(k) for k in sorted(keys)} for row in rows]
    pq.write_table(pa.Table.from_pylist(renamed), path, row_group_size=50)
    return path


def _as_dicts(result) -> list[dict]:
    return [s.to_dict() for s in result.samples]


@pytest.fixture(scope="module")
def mmvu(shared_data: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    """eval_mmvu.json (625 real questions, Video-R1 eval format) written as parquet under the same stem."""
    folder = tmp_path_factory.mktemp("parquet")
    return _write_parquet(_rows(shared_data), folder / "eval_mmvu.parquet"), _rows(shared_data)


def test_parquet_loads_the_same_samples_as_its_json(mmvu, shared_data):
    parquet, rows = mmvu
    expected = load_samples(shared_data / "real" / "eval_questions" / "eval_mmvu.json", require_media=False)
    got = load_samples(parquet, require_media=False, media_root=shared_data / "real" / "eval_questions")
    assert len(got.samples) == len(rows) == 625 and got.format == "videor1-eval"
    assert _as_dicts(got) == _as_dicts(expected)
    assert len(got.missing_media) == 625  # the videos are not distributed: reported, as from the JSON


def test_renamed_columns_map_to_veripo_fields(mmvu, shared_data, tmp_path):
    parquet, rows = mmvu
    renamed = _write_parquet(rows, tmp_path / "eval_mmvu.parquet", RENAMED)
    root = shared_data / "real" / "eval_questions"
    got = load_samples(renamed, columns=RENAMED, require_media=False, media_root=root)
    assert _as_dicts(got) == _as_dicts(load_samples(parquet, require_media=False, media_root=root))
    first = HfRows(renamed, RENAMED).first()  # a renamed column is not kept under its own name too
    assert set(first) == set(rows[0]) and first == rows[0]
    # control: without the mapping no record format fits the renamed columns
    with pytest.raises(DataError, match="cannot tell the format from the first record's keys"):
        load_samples(renamed, require_media=False, media_root=root)


def test_streaming_reads_the_same_rows_lazily_and_writes_no_cache(mmvu, tmp_path):
    parquet, _ = mmvu
    kept = load_samples(parquet, require_media=False)
    streamed = load_samples(parquet, require_media=False, streaming=True)
    assert _as_dicts(streamed) == _as_dicts(kept)

    rows = HfRows(parquet, {}, streaming=True, cache_dir=str(tmp_path / "streamed-cache"))
    taken = [row for _, row in zip(range(5), rows)]
    rows.close()
    assert len(taken) == 5 and rows.read == 5  # nothing read beyond what was asked for
    assert not list((tmp_path / "streamed-cache").rglob("*.arrow"))
    eager = HfRows(parquet, {}, streaming=False, cache_dir=str(tmp_path / "eager-cache"))
    assert list((tmp_path / "eager-cache").rglob("*.arrow")), "control: a non-streamed read converts to Arrow"
    eager.close()


def test_limit_stops_a_streamed_read(mmvu, monkeypatch):
    parquet, _ = mmvu
    opened = []

    class Recorded(HfRows):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(hf_datasets, "HfRows", Recorded)
    got = load_samples(parquet, require_media=False, streaming=True, limit=7)
    assert len(got.samples) == 7 and opened[0].read <= 8


def test_a_save_to_disk_folder_and_its_splits(mmvu, tmp_path):
    parquet, rows = mmvu
    table = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(tmp_path / "cache"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    assert is_hf_source(tmp_path / "saved")
    got = load_samples(tmp_path / "saved", split="test", require_media=False, source="eval_mmvu")
    assert _as_dicts(got) == _as_dicts(load_samples(parquet, require_media=False, media_root=tmp_path / "saved"))
    with pytest.raises(DataError, match=r"saved: cannot open it as a Hugging Face dataset \(split 'train'\): no split 'train'; the folder holds \['test'\]"):
        load_samples(tmp_path / "saved", require_media=False)


def test_a_hub_name_goes_to_load_dataset(monkeypatch, tmp_path):
    calls = []

    def fake_load_dataset(name, split, streaming, cache_dir):  # datasets.load_dataset's documented arguments
        calls.append((name, split, streaming))
        return datasets.Dataset.from_list([{"problem": "2+2?", "solution": "<answer>4</answer>",
                                            "problem_type": "numerical"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_samples("hf:someone/maths", split="validation", streaming=True, media_root=tmp_path)
    assert calls == [("someone/maths", "validation", True)]
    assert [(s.id, s.answer) for s in got.samples] == [("someone-maths:0", "4")]


def test_bad_settings_name_the_dataset_and_key(mmvu, shared_data, tmp_path):
    parquet, _ = mmvu
    with pytest.raises(DataError, match=r"eval_mmvu.parquet: columns: \['prompt'\] are not veripo fields"):
        load_samples(parquet, columns={"prompt": "problem"})
    with pytest.raises(DataError, match=r"eval_mmvu.parquet: columns.problem: no column 'question'"):
        load_samples(parquet, columns={"problem": "question"})
    with pytest.raises(DataError, match="columns are a Hugging Face dataset setting"):
        load_samples(shared_data / "real" / "eval_questions" / "eval_mmvu.json", columns={"problem": "q"})
    with pytest.raises(DataError, match="missing.parquet: cannot open it"):
        load_samples(tmp_path / "missing.parquet")


def test_embedded_media_and_bad_records_are_counted_skips(tmp_path):
    rows = [{"problem": "What is shown?", "solution": "<answer>A</answer>", "options": ["A. cat", "B. dog"],
             "image": [b"\x89PNG..."]},
            {"problem": "1+1?", "solution": "<answer>2</answer>", "options": [], "image": None}]
    got = load_samples(_write_parquet(rows, tmp_path / "mixed.parquet"))
    assert [s.answer for s in got.samples] == ["2"]
    assert [(s.index, s.field) for s in got.skipped] == [(0, "image")]
    assert "mixed.parquet record 0: field 'image'" in str(got.skipped[0])


def test_missing_datasets_package_names_the_extra(mmvu, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'veripo\[datasets\]'"):
        load_samples(mmvu[0])


def test_data_inspect_reads_a_renamed_parquet(mmvu, tmp_path):
    from typer.testing import CliRunner

    from veripo.cli.main import app

    parquet, rows = mmvu
    renamed = _write_parquet(rows, tmp_path / "eval_mmvu.parquet", RENAMED)
    args = ["data", "inspect", str(renamed), *(f"--column={field}={column}" for field, column in RENAMED.items())]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "format videor1-eval, 625 samples, 0 skipped, 625 with missing media" in result.stdout
    bad = CliRunner().invoke(app, ["data", "inspect", str(renamed), "--column", "problem"])
    assert bad.exit_code == 2 and "--column expects FIELD=COLUMN" in bad.output
