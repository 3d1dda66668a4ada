"""Synthetic tasks: deterministic by seed, loadable, every problem type, and the pictures match the answers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from veripo.data.loaders import load_samples
from veripo.data.media import load_image, load_video
from veripo.data.records import PROBLEM_TYPES, reference_completion
from veripo.data.synthetic import (
    COLOURS,
    MULTI_STEP,
    TASKS,
    Canvas,
    generate_task,
    make_synthetic,
    render,
    synthetic_corpus,
)
from veripo.data.synthetic_tasks import DIRECTIONS

PIXELS = {"min_pixels": 0, "max_pixels": 112 * 112}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 42 = 14 of each kind: every video task twice, every image and text task at least three times.
    return make_synthetic(tmp_path_factory.mktemp("syn") / "a", n=42, seed=3, difficulties=(1, 2, 3))


def _cell_colours(frame: np.ndarray, cell: int = 28) -> dict[tuple[int, int], str]:
    """The colour name at the centre of each non-black cell of a decoded frame."""
    found = {}
    grid = frame.shape[0] // cell
    for r in range(grid):
        for c in range(grid):
            rgb = frame[r * cell + cell // 2, c * cell + cell // 2].astype(int)
            if rgb.sum() > 150:
                found[(r, c)] = min(COLOURS, key=lambda k: np.abs(np.array(COLOURS[k]) - rgb).sum())
    return found


def test_same_seed_same_dataset_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic(tmp_path / "b", n=42, seed=3, difficulties=(1, 2, 3))
    assert (again / "dataset.json").read_text() == (dataset / "dataset.json").read_text()
    for row in json.loads((dataset / "dataset.json").read_text()):
        if row["data_type"] == "video":
            a = load_video(dataset / row["path"], **PIXELS).frames
            np.testing.assert_array_equal(a, load_video(again / row["path"], **PIXELS).frames)
    other = make_synthetic(tmp_path / "c", n=42, seed=4, difficulties=(1, 2, 3))
    assert (other / "dataset.json").read_text() != (dataset / "dataset.json").read_text()
    # Sample i does not depend on n: a prefix of a bigger dataset is the smaller dataset.
    bigger = make_synthetic(tmp_path / "d", n=45, seed=3, difficulties=(1, 2, 3))
    assert json.loads((bigger / "dataset.json").read_text())[:42] == json.loads((dataset / "dataset.json").read_text())


def test_loads_with_every_problem_type_and_reference_chains(dataset: Path) -> None:
    result = load_samples(dataset)
    assert result.format == "videor1" and not result.skipped and len(result.samples) == 42
    assert {s.problem_type for s in result.samples} == set(PROBLEM_TYPES)
    assert Counter(s.data_type for s in result.samples) == {"video": 14, "image": 14, "text": 14}
    assert {s.extra["task"] for s in result.samples if s.data_type == "video"} == set(TASKS["video"]) - set(MULTI_STEP)
    for s in result.samples:
        assert s.reasoning and s.reasoning.endswith(f"the answer is {s.answer}."), s
        assert reference_completion(s) == f"<think>{s.reasoning}</think><answer>{s.answer}</answer>"
        assert s.difficulty in (1, 2, 3) and len(s.answer.split()) <= 6
        if s.problem_type == "multiple choice":
            assert 2 <= len(s.options) <= 4 and s.answer in {o[0] for o in s.options}
        if s.data_type == "video":
            assert Path(s.video).is_file() and s.reasoning.startswith(("Frame 1:", "Frames 1-", "A white digit"))
        if s.data_type == "image":
            assert load_image(s.images[0], **PIXELS).shape == (112, 112, 3)


def test_decoded_videos_show_what_the_answers_say(dataset: Path) -> None:
    checked = Counter()
    for s in load_samples(dataset).samples:
        if s.data_type != "video":
            continue
        video = load_video(s.video, **PIXELS)
        assert video.fps == pytest.approx(2.0) and 4 <= len(video.frames) <= 8  # 2 fps: every frame kept
        first, last = _cell_colours(video.frames[0]), _cell_colours(video.frames[-1])
        task = s.extra["task"]
        if task == "count":
            assert len(last) == int(s.answer)
        elif task == "colour_change":
            assert list(last.values()) == [dict(o.split(". ") for o in s.options)[s.answer]]
        elif task == "direction":
            colour = s.problem.split()[-3]
            (r0, c0), (r1, c1) = (next(k for k, v in f.items() if v == colour) for f in (first, last))
            moved = {(0, -1): "left", (0, 1): "right", (-1, 0): "up", (1, 0): "down"}[
                (int(np.sign(r1 - r0)), int(np.sign(c1 - c0)))]
            assert dict(o.split(". ") for o in s.options)[s.answer] == moved
        elif task == "distance" and "cells" in s.problem:
            (r0, c0), (r1, c1) = next(iter(first)), next(iter(last))
            assert abs(r1 - r0) + abs(c1 - c0) == int(s.answer)
        else:
            continue
        checked[task] += 1
    assert set(checked) == {"count", "colour_change", "direction", "distance"}


def test_brief_chains_state_the_finding_with_the_same_conclusion(dataset: Path, tmp_path: Path) -> None:
    brief = make_synthetic(tmp_path / "brief", n=42, seed=3, difficulties=(1, 2, 3), chain="brief")
    full_rows = json.loads((dataset / "dataset.json").read_text())
    brief_rows = json.loads((brief / "dataset.json").read_text())
    # Only the reference chain differs; the media are the same files.
    assert [{**r, "process": ""} for r in brief_rows] == [{**r, "process": ""} for r in full_rows]
    words = {w for line in synthetic_corpus(n_per_kind=60) for w in re.findall("[A-Za-z]+", line)}
    seen = set()
    for s, f in zip(load_samples(brief).samples, load_samples(dataset).samples, strict=True):
        last = lambda text: text.rsplit(". ", 1)[-1]  # noqa: E731 - "Green is option B, so the answer is B."
        assert last(s.reasoning) == last(f.reasoning), s.id
        assert not re.search(r"\b(row|column|Frames?)\b", s.reasoning), s.reasoning
        assert set(re.findall("[A-Za-z]+", s.reasoning)) <= words, s.reasoning  # the tokenizer knows them
        if s.data_type == "video" and s.problem_type == "multiple choice":
            value = dict(o.split(". ") for o in s.options)[s.answer]
            finding, lookup = s.reasoning.split(". ", 1)
            assert value in finding.split() and lookup.startswith(f"{value.capitalize()} is option {s.answer},"), s
        seen.add(s.extra["task"])
    assert seen >= (set(TASKS["video"]) | set(TASKS["image"])) - set(MULTI_STEP)
    cc = generate_task(3, 0, "video", canvas=Canvas(size=56), frames=(4, 4), difficulties=(1,), tasks=["colour_change"])
    before, after = cc.problem.split()[1], dict(o.split(". ") for o in cc.options)[cc.answer]
    assert cc.brief == (f"The {before} square turns {after}. {after.capitalize()} is option {cc.answer}, "
                        f"so the answer is {cc.answer}.")
    with pytest.raises(ValueError, match="unknown chain style"):
        make_synthetic(tmp_path / "x", n=1, chain="long")


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kinds"):
        make_synthetic(tmp_path, n=1, kinds=("audio",))
    with pytest.raises(ValueError, match="multiple of 28"):
        make_synthetic(tmp_path, n=1, size=100)
    with pytest.raises(ValueError, match="4 <= min <= max <= 16"):
        make_synthetic(tmp_path, n=1, frames=(2, 8))
    with pytest.raises(ValueError, match="difficulties"):
        make_synthetic(tmp_path, n=1, difficulties=(4,))
    with pytest.raises(ValueError, match=r"unknown tasks \['colour_chnage'\]"):
        make_synthetic(tmp_path, n=1, tasks=("count", "colour_chnage"))


@pytest.mark.parametrize("size", [56, 84, 112])
def test_every_task_draws_at_the_edges_of_the_settings(size: int) -> None:
    canvas = Canvas(size=size)
    for frames in ((4, 4), (16, 16)):
        for kind, tasks in TASKS.items():
            for name in tasks:
                for i in range(6):
                    task = generate_task(1, i, kind, canvas=canvas, frames=frames, difficulties=(1, 2, 3),
                                         tasks=[name])
                    assert task.name == name
                    if task.scene is not None:
                        assert render(task, canvas).shape[1:] == (size, size, 3)


def test_corpus_covers_the_words_of_generated_datasets(dataset: Path) -> None:
    words = {w for line in synthetic_corpus(n_per_kind=60) for w in re.findall("[A-Za-z]+", line)}
    for s in load_samples(dataset).samples:
        for text in (s.problem, s.answer, s.reasoning, *s.options):
            assert set(re.findall("[A-Za-z]+", text)) <= words, text


def test_options_keep_a_fixed_order_below_difficulty_3() -> None:
    """Difficulties 1-2 list options in the fixed order of their pool (colours as in COLOURS, directions as
    in DIRECTIONS, left before right), so an option's letter follows from its value; difficulty 3 shuffles."""
    colour_rank = {c: i for i, c in enumerate(COLOURS)}
    orders = {"colour": colour_rank, "colour_change": colour_rank, "appeared_first": colour_rank,
              "direction": {d: i for i, d in enumerate(DIRECTIONS)}, "side": {"left": 0, "right": 1}}
    shuffled = 0
    for difficulty in (1, 2, 3):
        for kind in ("video", "image"):
            for i in range(60):
                task = generate_task(5, i, kind, canvas=Canvas(size=112), frames=(4, 8), difficulties=(difficulty,))
                if task.name not in orders:
                    continue
                ranks = [orders[task.name][o.split(". ", 1)[1]] for o in task.options]
                if difficulty < 3:
                    assert ranks == sorted(ranks), (task.name, difficulty, task.options)
                else:
                    shuffled += ranks != sorted(ranks)
    assert shuffled > 0  # difficulty 3 does shuffle


def _runs(colours: list[str]) -> list[str]:
    """Consecutive repeats merged: the colour of each run."""
    return [c for i, c in enumerate(colours) if i == 0 or c != colours[i - 1]]


def test_multi_step_tasks_count_the_runs_the_video_shows(dataset: Path, tmp_path: Path) -> None:
    """colour_steps and colour_before: the decoded frames' runs of colour give the answer, a colour may come
    back (so counting colours is not counting changes), the brief chain lists every run before concluding
    (longer with more changes) in words the tiny tokenizer knows, the text variant states the same runs, and
    the unnamed default (the tokenizer's corpus, every earlier dataset) never draws them."""
    multi = make_synthetic(tmp_path / "multi", n=96, seed=5, kinds=("video", "text"), difficulties=(1, 2, 3),
                           tasks=MULTI_STEP, chain="brief")
    from veripo.models.tokenizer import training_corpus

    words = {w for line in training_corpus() for w in re.findall("[A-Za-z]+", line)}
    lengths: dict[int, list[int]] = {}
    returned = 0
    for s in load_samples(multi).samples:
        assert s.extra["task"] in MULTI_STEP and s.reasoning.endswith(f"the answer is {s.answer}.")
        for text in (s.problem, s.reasoning, *s.options):
            assert set(re.findall("[A-Za-z]+", text)) <= words, text
        if s.data_type == "video":
            video = load_video(s.video, **PIXELS)
            per_frame = []
            for frame in video.frames:
                (colour,) = _cell_colours(frame).values()  # one square, always visible
                per_frame.append(colour)
        else:  # "Frame 1: red. Frames 2-3: green. ..." before the question
            per_frame = []
            for first, last, colour in re.findall(r"Frames? (\d+)(?:-(\d+))?: (\w+)\.", s.problem):
                per_frame += [colour] * (int(last or first) - int(first) + 1)
        runs = _runs(per_frame)
        assert s.reasoning.startswith(f"The square is {', then '.join(runs)}."), (runs, s.reasoning)
        returned += len(set(runs)) < len(runs)
        if s.extra["task"] == "colour_steps":
            assert int(s.answer) == len(runs) - 1
            lengths.setdefault(len(runs) - 1, []).append(len(s.reasoning.split()))
        else:
            assert runs[-1] not in runs[:-1] and s.problem.rstrip("?").endswith(f"before it turns {runs[-1]}")
            value = dict(o.split(". ") for o in s.options)[s.answer]
            assert value == runs[-2] and runs[-1] not in s.options
            finding, lookup = s.reasoning.rsplit(". ", 1)
            assert finding.endswith(f"Before {runs[-1]} it is {value}") and lookup.startswith(
                f"{value.capitalize()} is option {s.answer},")
    assert set(lengths) == {1, 2, 3} and returned > 0
    means = [np.mean(lengths[k]) for k in (1, 2, 3)]
    assert means == sorted(means) and means[0] < means[2]  # more changes, longer chain
    default = make_synthetic(tmp_path / "default", n=60, seed=5, kinds=("video", "text"))
    assert not {s.extra["task"] for s in load_samples(default).samples} & set(MULTI_STEP)
    assert not any("How many times" in line for line in synthetic_corpus(n_per_kind=60))
    ordered = generate_task(5, 0, "video", canvas=Canvas(size=56), frames=(8, 8), difficulties=(2,),
                            tasks=["colour_before"])
    ranks = [list(COLOURS).index(o.split(". ", 1)[1]) for o in ordered.options]
    assert ranks == sorted(ranks)  # below difficulty 3 the options keep the colours' fixed order
