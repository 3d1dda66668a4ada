"""Benchmark settings by name, overrides, and VerIPO-format numeric questions."""

from __future__ import annotations

import pytest

from veripo.data.loaders import load_samples
from veripo.eval.benchmarks import (
    assign_numeric_types,
    benchmark_name,
    find_benchmark,
    settings_for,
)


@pytest.mark.parametrize("name, key", [("veripo_tomato", "tomato"), ("eval_vsibench", "vsi_bench"),
                                       ("vsi_bench", "vsi_bench"), ("eval_videommmu", "videommmu"),
                                       ("eval_mmvu", "mmvu"), ("Video-MME", "video_mme"), ("my_heldout", None)])
def test_find_benchmark(name, key):
    assert find_benchmark(name) == key


def test_veripo_defaults_and_tomato():
    default = settings_for("my_heldout")
    assert (default.fps, default.max_frames, default.max_pixels) == (2.0, 128, 256 * 28 * 28)
    assert default.key == "my_heldout"
    assert settings_for("veripo_tomato").fps == 4.0
    assert settings_for("eval_vsibench").numeric_type == "regression"
    media = settings_for("veripo_tomato").media_config("/tmp/cache")
    assert (media.fps, media.max_frames, media.min_frames, media.cache_dir) == (4.0, 128, 4, "/tmp/cache")


def test_overrides():
    s = settings_for("veripo_tomato", max_frames=32, fps=None)
    assert (s.fps, s.max_frames) == (4.0, 32)  # None leaves the benchmark's own value
    with pytest.raises(ValueError, match="unknown benchmark setting.*frames_per_second"):
        settings_for("x", frames_per_second=3)


def test_benchmark_name(tmp_path):
    assert benchmark_name("/data/eval_mmvu.json") == "eval_mmvu"
    folder = tmp_path / "held out"
    folder.mkdir()
    assert benchmark_name(folder) == "held_out"


def test_veripo_numeric_questions_get_their_type(tmp_path):
    bench = tmp_path / "vsi_bench.json"
    bench.write_text("""[
 {"question_id": "v1", "video_path": "a.mp4", "question": "How many chairs?", "answer": "6",
  "processed_question": "How many chairs?"},
 {"question_id": "v2", "video_path": "b.mp4", "question": "Room size?", "answer": "20.4",
  "processed_question": "Room size?"},
 {"question_id": "v3", "video_path": "c.mp4", "question": "Which?", "answer": "C",
  "processed_question": "Which?\\nA. x\\nB. y\\nC. z"},
 {"question_id": "v4", "video_path": "d.mp4", "question": "Name it", "answer": "a red cube",
  "processed_question": "Name it"}]""")
    samples = load_samples(bench, require_media=False).samples
    assert assign_numeric_types(samples, settings_for("vsi_bench")) == 2
    assert [s.problem_type for s in samples] == ["regression", "regression", "multiple choice", "free-form"]
    elsewhere = load_samples(bench, require_media=False).samples
    assign_numeric_types(elsewhere, settings_for("other"))
    assert elsewhere[0].problem_type == "numerical"


def test_small_pixel_budget_lowers_the_minimum():
    s = settings_for("x", max_pixels=64 * 28 * 28)
    assert s.min_pixels == 64 * 28 * 28 and s.media_config().max_pixels == 64 * 28 * 28
