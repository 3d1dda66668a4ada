"""Loaders: the real files in ../shared/data load with their MANIFEST counts; bad input is reported, not fatal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veripo.data.jsonl import JsonlWriter
from veripo.data.loaders import DataError, load_samples, parse_options, resolve_media
from veripo.data.records import Sample

# file -> (format, samples, problem-type counts), from ../shared/data/MANIFEST.md
REAL_FILES = {
    "eval_questions/eval_mmvu.json": ("videor1-eval", 625, {"multiple choice": 625}),
    "eval_questions/eval_videommmu.json": ("videor1-eval", 900, {"multiple choice": 882, "numerical": 18}),
    "eval_questions/veripo_tomato.json": ("veripo-eval", 1484, {"multiple choice": 1484}),
    "eval_questions/veripo_mmvu.json": ("veripo-eval", 625, {"multiple choice": 625}),
    "videor1_samples/videor1_cot165k_card_example.json": ("videor1-eval", 1, {"multiple choice": 1}),
}


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_question_files_load_with_manifest_counts(shared_data: Path, name: str) -> None:
    fmt, count, types = REAL_FILES[name]
    result = load_samples(shared_data / "real" / name, require_media=False)
    assert result.format == fmt and not result.skipped
    assert len(result.samples) == count and Counter(s.problem_type for s in result.samples) == types
    for s in result.samples:
        assert s.answer and "<answer>" not in s.answer
        if s.problem_type == "multiple choice":
            assert s.answer in {o[0] for o in s.options}, s.id
    assert len({s.id for s in result.samples}) == count


def test_videor1_training_rows_with_one_missing_video(shared_data: Path) -> None:
    path = shared_data / "real/videor1_samples/sample_data.json"
    result = load_samples(path)
    assert result.format == "videor1"
    assert Counter(s.problem_type for s in result.samples) == {"multiple choice": 1, "numerical": 1, "OCR": 1,
                                                               "regression": 1}
    [skipped] = result.skipped
    assert skipped.index == 1 and skipped.field == "video" and "split_8.mp4" in skipped.reason
    assert "split_8.mp4" in result.summary()
    by_type = {s.problem_type: s for s in result.samples}
    assert by_type["multiple choice"].answer == "A" and by_type["regression"].answer == "9.62"
    assert by_type["OCR"].data_type == "image" and Path(by_type["OCR"].images[0]).is_file()
    assert Path(by_type["numerical"].video).name == "video_05282.mp4"  # published prefix stripped
    kept = load_samples(path, require_media=False)
    assert len(kept.samples) == 5 and len(kept.missing_media) == 1
    with pytest.raises(DataError, match=r"sample_data\.json record 1: field 'video': media file not found"):
        load_samples(path, on_error="fail")


def test_cot_example_keeps_reasoning_and_veripo_matches_videor1_eval(shared_data: Path) -> None:
    [cot] = load_samples(shared_data / "real/videor1_samples/videor1_cot165k_card_example.json").samples
    assert cot.reasoning and cot.reasoning.startswith("Let me think") and "<think>" not in cot.reasoning
    videor1 = load_samples(shared_data / "real/eval_questions/eval_mmvu.json", require_media=False).samples
    veripo = load_samples(shared_data / "real/eval_questions/veripo_mmvu.json", require_media=False).samples
    assert [s.answer for s in videor1] == [s.answer for s in veripo]
    assert sum(a.options == b.options for a, b in zip(videor1, veripo)) >= 0.95 * len(videor1)


def test_parse_options_stops_at_the_instruction_line() -> None:
    q, opts = parse_options("Which way?\nA. Left.\nB. Right.\nAnswer with the option's letter.")
    assert q == "Which way?" and opts == ["A. Left.", "B. Right."]


def test_media_paths_escaping_the_root_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"x")
    for bad in ("../secret.mp4", str(tmp_path / "secret.mp4"), "a/../../secret.mp4"):
        with pytest.raises(DataError, match="escapes the media root"):
            resolve_media(bad, root)
    rows = [{"problem": "q", "problem_type": "numerical", "solution": "<answer>1</answer>", "path": "../secret.mp4",
             "data_type": "video"}]
    data = tmp_path / "media" / "d.json"
    data.write_text(json.dumps(rows))
    result = load_samples(data)
    assert not result.samples and "escapes the media root" in result.skipped[0].reason


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n {"problem": "q",\n  "solution": oops}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:3:\d+: invalid JSON"):
        load_samples(path)


def test_non_utf8_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('[\n{"problem": "caf\u00e9", "problem_type": "free-form", "solution": "x"}\n]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.json:2: not valid UTF-8"):
        load_samples(path)


def test_unknown_problem_type_and_bad_fields_are_skipped_with_reasons(tmp_path: Path) -> None:
    rows = [{"problem": "ok", "problem_type": "multiple-choice", "options": ["A. x", "B. y"], "solution": "<answer>B</answer>"},
            {"problem": "q", "problem_type": "essay", "solution": "<answer>x</answer>"},
            {"problem": "q", "problem_type": "numerical"},
            {"problem": "q", "problem_type": "numerical", "solution": "1", "options": "A. x"},
            "not a record",
            {"problem": "q", "problem_type": "OCR", "solution": "1", "data_type": "video"},
            {"problem": "q", "problem_type": "OCR", "solution": "1", "path": "a.png"}]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    result = load_samples(path)
    assert [s.problem_type for s in result.samples] == ["multiple choice"] and result.samples[0].answer == "B"
    reasons = {r.index: (r.field, r.reason) for r in result.skipped}
    assert reasons[1][0] == "problem_type" and "unknown problem type 'essay'" in reasons[1][1]
    assert reasons[2] == ("solution", "missing")
    assert reasons[3][0] == "options" and reasons[4][0] == "<record>"
    assert reasons[5] == ("path", "data_type is 'video' but the record names no video file")
    assert reasons[6][0] == "images" and "a.png" in reasons[6][1]  # a .png path is an image (missing here)
    with pytest.raises(DataError, match=r"record 1: field 'problem_type'"):
        load_samples(path, on_error="fail")
    assert len(load_samples(path, limit=1).samples) == 1


def test_generic_jsonl_of_samples_with_torn_tail(tmp_path: Path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"not really a video")
    path = tmp_path / "s.jsonl"
    samples = [Sample(id=f"x{i}", problem="What?", problem_type="numerical", answer=str(i)) for i in range(3)]
    samples.append(Sample(id="v", problem="?", problem_type="OCR", answer="7", video="v.mp4", data_type="video"))
    with JsonlWriter(path) as writer:
        writer.write_many(samples)
    with open(path, "ab") as f:
        f.write(b'{"id": "torn", "pro')
    result = load_samples(path)
    assert result.format == "jsonl" and [s.id for s in result.samples] == ["x0", "x1", "x2", "v"]
    assert result.samples[3].video == str((tmp_path / "v.mp4").resolve())
    assert result.skipped[0].index == 6 and "torn last line" in result.skipped[0].reason


_LINE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=30).filter(
    lambda t: t.strip() == t and t != "")


@settings(max_examples=80, deadline=None)
@given(question=_LINE.filter(lambda t: not t[:1].isupper()), options=st.lists(_LINE, min_size=2, max_size=6))
def test_parse_options_round_trips_processed_questions(question: str, options: list[str]) -> None:
    shown = [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]
    assert parse_options("\n".join([question, *shown])) == (question, shown)
