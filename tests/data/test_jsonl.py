"""JSONL files: round trips, schema header, torn last lines, malformed lines, and a writer killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veripo.data.jsonl import (
    JsonlError,
    JsonlWriter,
    TornLineWarning,
    read_jsonl,
    scan_jsonl,
)
from veripo.data.records import SCHEMA_VERSION, Pair, Rollout, Sample, Verdict


def _rollout(i: int) -> Rollout:
    return Rollout(id=f"s{i}/0/{i % 8}", sample_id=f"s{i}", group_index=i % 8, text="<think>é</think><answer>A</answer>",
                   rewards={"accuracy": 1.0, "format": 0.5}, token_ids=[1, 2, 3])


def test_round_trip_every_record_type(tmp_path: Path) -> None:
    records = [Sample(id="a", problem="q?", problem_type="numerical", answer="3", extra={"k": [1]}), _rollout(1),
               Verdict(rollout_id="r", sample_id="s", format_ok=True, accuracy=1.0, correct=True, thinking_tokens=5,
                       repetitive=False, truncated=False, reasons=["ok"]),
               Pair(id="p", sample_id="s", pair_type="consistency", chosen="c", rejected="r")]
    for record in records:
        path = tmp_path / f"{record.kind}.jsonl"
        with JsonlWriter(path) as writer:
            writer.write(record)
            writer.write(record.to_dict())
        back = read_jsonl(path, type(record))
        assert back == [record, record]
        assert read_jsonl(path, record.kind) == [record, record]
        header = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        assert header["schema_version"] == SCHEMA_VERSION and header["kind"] == record.kind


def test_append_keeps_one_header_and_plain_dicts_read_back(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    for i in range(3):
        with JsonlWriter(path, fsync="batch", batch_size=2) as writer:
            writer.write({"i": i})
    assert read_jsonl(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert sum('"_veripo"' in line for line in path.read_text().splitlines()) == 1


def test_torn_last_line_is_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with JsonlWriter(path) as writer:
        for i in range(3):
            writer.write(_rollout(i))
    with open(path, "ab") as f:
        f.write(b'{"id": "s9/0/1", "sample_id": "s9", "gro')
    with pytest.warns(TornLineWarning, match=r"r\.jsonl:5"):
        scan = scan_jsonl(path, Rollout)
    assert scan.torn_lines == 1 and [r.id for r in scan.records] == [_rollout(i).id for i in range(3)]
    # A writer reopening the file cuts the torn bytes off, so the next record starts on its own line.
    with JsonlWriter(path) as writer:
        writer.write(_rollout(7))
    assert [r.sample_id for r in read_jsonl(path, Rollout)] == ["s0", "s1", "s2", "s7"]


def test_malformed_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(JsonlError, match=r"bad\.jsonl:2: invalid JSON"):
        read_jsonl(path)


def test_non_utf8_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')
    with pytest.raises(JsonlError, match=r"latin\.jsonl:2: not valid UTF-8"):
        read_jsonl(path)


def test_bom_and_crlf_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps({"_veripo": "jsonl", "kind": "sample", "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(JsonlError, match="schema_version"):
        read_jsonl(path)


_KILLED_WRITER = """
import sys
from veripo.data.jsonl import JsonlWriter
from veripo.data.records import Rollout
with JsonlWriter(sys.argv[1], fsync="none") as w:
    i = 0
    while True:
        w.write(Rollout(id=str(i), sample_id="s", group_index=i, text="x" * (1000 + i % 5000), token_ids=list(range(200))))
        i += 1
"""


def test_kill_during_write_loses_at_most_the_record_being_written(tmp_path: Path) -> None:
    path = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        deadline = time.monotonic() + 120  # ends at 2 MB; generous for a loaded parallel suite
        while time.monotonic() < deadline and (not path.exists() or path.stat().st_size < 2_000_000):
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    scan = scan_jsonl(path, Rollout)  # a torn last line would warn, never raise
    ids = [int(r.id) for r in scan.records]
    assert len(ids) > 100 and ids == list(range(len(ids)))
    assert all(r.text == "x" * (1000 + int(r.id) % 5000) for r in scan.records)
    # The run resumes appending to the same file; everything read back stays whole.
    with JsonlWriter(path) as writer:
        writer.write(Rollout(id="resumed", sample_id="s", group_index=0, text=""))
    assert read_jsonl(path, Rollout)[-1].id == "resumed"


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(), min_size=1, max_size=5), cut=st.integers(min_value=1, max_value=200))
def test_any_text_round_trips_and_any_cut_reads_back_whole_records(tmp_path_factory, texts, cut) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.jsonl"
    with JsonlWriter(path, fsync="none") as writer:
        for i, text in enumerate(texts):
            writer.write({"i": i, "text": text})
    assert read_jsonl(path) == [{"i": i, "text": t} for i, t in enumerate(texts)]
    data = path.read_bytes()
    path.write_bytes(data[: max(0, len(data) - cut)])  # a kill at an arbitrary byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornLineWarning)
        records = read_jsonl(path)
    assert records == [{"i": i, "text": t} for i, t in enumerate(texts)][: len(records)]
