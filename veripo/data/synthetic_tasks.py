"""The synthetic task generators: each draws one question (scene, question, options, gold answer, difficulty
and a reference chain of thought) from a seeded generator. Registered by kind in ``TASKS``; rendering and
writing live in ``veripo.data.synthetic``.

Each task is a pure function ``(rng, canvas, frames, difficulty) -> Task``. Difficulty 1 uses 2 options in a
fixed order and one object; 2 adds options or hides the event in time; 3 shuffles options and adds distractors.

Every task carries two reference chains of thought ending in the same conclusion: ``reasoning`` describes each
frame (colours with their row and column, runs of identical frames) before the finding; ``brief`` states the
finding alone ("The red square turns green."). A tiny model learns what it sees much faster from the brief
chain: measured on colour_change with the tiny model (200 SFT steps of 16, lr 1e-3), greedy held-out accuracy
0.85 with brief chains against 0.45 with frame-by-frame ones (which also make it name cells it cannot locate).

The multi-step family (``MULTI_STEP``: colour_steps, colour_before, as video and as text) needs several steps
over the frames, and its brief chain lists them, so its length grows with the number of colour changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
                                            "yellow": (240, 220, 40)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
LETTERS = "ABCD"
FPS = 2  # frames per second written: the default sampler (2 fps) then keeps every frame
# 3x5 bitmaps of the digits, drawn in white blocks of half a cell (one 14 px patch each).
DIGIT_BITMAPS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
           "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111"]

Obj = tuple[str, int, int]  # (colour, row, column), 0-based cells
Scene = list[list[Obj]]  # the objects visible in each frame


@dataclass
class Task:
    """One generated question before it is written: ``scene`` is None for text-only tasks."""

    name: str
    problem: str
    problem_type: str
    answer: str
    reasoning: str
    options: list[str] = field(default_factory=list)
    scene: Scene | None = None
    digit: tuple[int, list[int]] | None = None  # (digit, frames it is drawn on)
    difficulty: int = 1
    brief: str = ""  # the chain that states only the finding (same conclusion); empty: same as ``reasoning``


@dataclass(frozen=True)
class Canvas:
    size: int = 112  # frame side in pixels
    cell: int = 28

    @property
    def grid(self) -> int:
        return self.size // self.cell


# --------------------------------------------------------------------------------------------- helpers


def _where(obj: Obj) -> str:
    return f"{obj[0]} at row {obj[1] + 1}, column {obj[2] + 1}"


def _describe_frames(scene: Scene) -> str:
    """What each frame shows; runs of identical frames are stated once ("Frames 2-4: ...") to keep the
    chain short for a tiny model."""
    lines = []
    t = 0
    while t < len(scene):
        end = t
        while end + 1 < len(scene) and sorted(scene[end + 1]) == sorted(scene[t]):
            end += 1
        seen = "; ".join(_where(o) for o in sorted(scene[t], key=lambda o: (o[1], o[2]))) or "nothing"
        frames = f"Frame {t + 1}" if end == t else f"Frames {t + 1}-{end + 1}"
        lines.append(f"{frames}: {seen}.")
        t = end + 1
    return " ".join(lines)


def _choice(rng: np.random.Generator, items: Sequence[str], k: int) -> list[str]:
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _multiple_choice(rng: np.random.Generator, correct: str, pool: Sequence[str], k: int,
                     shuffle: bool) -> tuple[list[str], str]:
    """Options "A. x" with ``correct`` among ``k`` values from ``pool``; fixed pool order unless ``shuffle``."""
    others = [p for p in pool if p != correct]
    values = [correct] + _choice(rng, others, k - 1)
    values = [values[i] for i in rng.permutation(k)] if shuffle else sorted(values, key=list(pool).index)
    letter = LETTERS[values.index(correct)]
    return [f"{LETTERS[i]}. {v}" for i, v in enumerate(values)], letter


def _cells(rng: np.random.Generator, canvas: Canvas, k: int) -> list[tuple[int, int]]:
    flat = rng.choice(canvas.grid * canvas.grid, size=k, replace=False)
    return [(int(c) // canvas.grid, int(c) % canvas.grid) for c in flat]


def _path(start: tuple[int, int], direction: str, cells: int, frames: int) -> list[tuple[int, int]]:
    """Positions over ``frames`` frames moving ``cells`` cells in ``direction`` at an even pace."""
    dr, dc = DIRECTIONS[direction]
    steps = [round(cells * t / (frames - 1)) for t in range(frames)]
    return [(start[0] + dr * s, start[1] + dc * s) for s in steps]


def _mover(rng: np.random.Generator, canvas: Canvas, frames: int, directions: Sequence[str],
           max_cells: int) -> tuple[str, str, int, list[tuple[int, int]]]:
    """A colour, a direction, a distance and a start cell such that the path stays on the grid."""
    direction = str(rng.choice(list(directions)))
    cells = int(rng.integers(1, min(max_cells, canvas.grid - 1) + 1))
    dr, dc = DIRECTIONS[direction]
    rows = range(canvas.grid) if dr == 0 else (range(canvas.grid - cells) if dr > 0 else range(cells, canvas.grid))
    cols = range(canvas.grid) if dc == 0 else (range(canvas.grid - cells) if dc > 0 else range(cells, canvas.grid))
    start = (int(rng.choice(list(rows))), int(rng.choice(list(cols))))
    return str(rng.choice(list(COLOURS))), direction, cells, _path(start, direction, cells, frames)


def _squares(n: int) -> str:
    return f"{n} square" if n == 1 else f"{n} squares"


def _conclude(observation: str, answer: str, options: list[str]) -> str:
    if options:
        value = next(o.split(". ", 1)[1] for o in options if o.startswith(f"{answer}. "))
        return f"{observation} {value[0].upper()}{value[1:]} is option {answer}, so the answer is {answer}."
    return f"{observation} So the answer is {answer}."


# ------------------------------------------------------------------------------------------ video tasks


def task_direction(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    directions = ("left", "right") if difficulty == 1 else tuple(DIRECTIONS)
    colour, direction, _, path = _mover(rng, canvas, frames, directions, canvas.grid - 1)
    scene: Scene = [[(colour, r, c)] for r, c in path]
    if difficulty >= 3:  # a still distractor in a cell the mover never visits
        free = [cell for cell in _cells(rng, canvas, canvas.grid * canvas.grid) if cell not in path]
        other = str(rng.choice([c for c in COLOURS if c != colour]))
        scene = [objs + [(other, *free[0])] for objs in scene]
    options, letter = _multiple_choice(rng, direction, list(DIRECTIONS)[: len(directions)], len(directions),
                                       shuffle=difficulty >= 3)
    finding = f"The {colour} square moves {direction}."
    reasoning = _conclude(f"{_describe_frames(scene)} {finding}", letter, options)
    return Task("direction", f"In which direction does the {colour} square move?", "multiple choice", letter,
                reasoning, options, scene, difficulty=difficulty, brief=_conclude(finding, letter, options))


def task_appeared_first(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    k = 2 if difficulty < 3 else 3
    colours = _choice(rng, list(COLOURS), k)
    cells = _cells(rng, canvas, k)
    onsets = sorted(int(x) for x in rng.choice(np.arange(frames - 1), size=k, replace=False))
    scene: Scene = [[(c, *cells[i]) for i, c in enumerate(colours) if t >= onsets[i]] for t in range(frames)]
    present = sorted(colours, key=list(COLOURS).index)  # the colours in the video, in the fixed colour order
    options, letter = _multiple_choice(rng, colours[0], present, k, shuffle=difficulty >= 3)
    reasoning = _conclude(f"{_describe_frames(scene)} The {colours[0]} square is the first to appear, in frame "
                          f"{onsets[0] + 1}.", letter, options)
    brief = _conclude(f"The {colours[0]} square appears first.", letter, options)
    return Task("appeared_first", "Which square appears first?", "multiple choice", letter, reasoning, options,
                scene, difficulty=difficulty, brief=brief)


def task_colour_change(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    before, after = _choice(rng, list(COLOURS), 2)
    cell = _cells(rng, canvas, 1)[0]
    switch = int(rng.integers(1, frames))
    scene: Scene = [[(before if t < switch else after, *cell)] for t in range(frames)]
    options, letter = _multiple_choice(rng, after, list(COLOURS), 2 if difficulty == 1 else 4, shuffle=difficulty >= 3)
    reasoning = _conclude(f"{_describe_frames(scene)} The square turns from {before} to {after} in frame "
                          f"{switch + 1}.", letter, options)
    brief = _conclude(f"The {before} square turns {after}.", letter, options)
    return Task("colour_change", f"The {before} square changes colour. What colour does it become?",
                "multiple choice", letter, reasoning, options, scene, difficulty=difficulty, brief=brief)


def task_count(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    n = int(rng.integers(1, 4 if difficulty == 1 else 5))
    cells = _cells(rng, canvas, n)
    colours = [str(rng.choice(list(COLOURS))) for _ in range(n)]
    if difficulty == 1:  # the same squares in every frame
        scene: Scene = [[(colours[i], *cells[i]) for i in range(n)] for _ in range(frames)]
        question, observation = "How many squares are there?", f"Every frame shows {_squares(n)}."
    else:  # squares appear over time: count those in the last frame
        onsets = [int(rng.integers(0, frames)) for _ in range(n)]
        scene = [[(colours[i], *cells[i]) for i in range(n) if t >= onsets[i]] for t in range(frames)]
        question, observation = "How many squares are in the last frame?", f"The last frame shows {_squares(n)}."
    reasoning = _conclude(f"{_describe_frames(scene)} {observation}", str(n), [])
    return Task("count", question, "numerical", str(n), reasoning, [], scene, difficulty=difficulty,
                brief=_conclude(observation, str(n), []))


def task_distance(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    directions = ("left", "right") if difficulty == 1 else tuple(DIRECTIONS)
    colour, direction, cells, path = _mover(rng, canvas, frames, directions, canvas.grid - 1)
    scene: Scene = [[(colour, r, c)] for r, c in path]
    unit = "cells" if difficulty < 3 else "pixels"
    answer = str(cells if unit == "cells" else cells * canvas.cell)
    extra = "" if unit == "cells" else f" One cell is {canvas.cell} pixels, so it moves {cells} x {canvas.cell} pixels."
    finding = f"The {colour} square moves {cells} cells {direction}.{extra}"
    reasoning = _conclude(f"{_describe_frames(scene)} {finding}", answer, [])
    return Task("distance", f"How many {unit} does the {colour} square move?", "regression", answer, reasoning,
                [], scene, difficulty=difficulty, brief=_conclude(finding, answer, []))


def task_describe(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    event = str(rng.choice(["moves", "appears", "disappears", "turns"]))
    if event == "moves":
        colour, direction, _, path = _mover(rng, canvas, frames, tuple(DIRECTIONS), 2)
        scene: Scene = [[(colour, r, c)] for r, c in path]
        answer = f"the {colour} square moves {direction}"
    else:
        colour, after = _choice(rng, list(COLOURS), 2)
        cell = _cells(rng, canvas, 1)[0]
        switch = int(rng.integers(1, frames))
        if event == "turns":
            scene = [[(colour if t < switch else after, *cell)] for t in range(frames)]
            answer = f"the {colour} square turns {after}"
        else:
            visible = (lambda t: t >= switch) if event == "appears" else (lambda t: t < switch)
            scene = [[(colour, *cell)] if visible(t) else [] for t in range(frames)]
            answer = f"the {colour} square {event}"
    reasoning = _conclude(_describe_frames(scene), answer, [])
    return Task("describe", "Describe in a few words what happens in the video.", "free-form", answer, reasoning,
                [], scene, difficulty=difficulty, brief=_conclude(f"{answer[0].upper()}{answer[1:]}.", answer, []))


def task_digit(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    digit = int(rng.integers(0, 10))
    shown = list(range(frames)) if difficulty == 1 else [int(rng.integers(0, frames))]
    seen = "every frame" if difficulty == 1 else f"frame {shown[0] + 1}"
    reasoning = _conclude(f"A white digit is drawn in {seen}. Its strokes form a {digit}.", str(digit), [])
    return Task("digit", "What digit is written in the video?", "OCR", str(digit), reasoning, [],
                [[] for _ in range(frames)], digit=(digit, shown), difficulty=difficulty,
                brief=_conclude(f"The strokes form a {digit}.", str(digit), []))


# -------------------------------------------------------------------------- multi-step tasks over frames
# One square in one cell shows a sequence of colours, each held for a run of frames. The answer needs
# several steps: name the colour of every run, merge repeated frames, then count the changes or look one
# run back. A colour may come back ("red, then green, then red"), so counting the colours seen does not
# give the number of changes. The brief chain lists the runs before concluding, so it grows with the
# number of changes. These tasks use only words of the other tasks (the tiny tokenizer knows them) and are
# drawn only when named (``MULTI_STEP``): the unnamed default, and with it the tiny tokenizer's corpus and
# every dataset made before them, stays as it was.


def _colour_runs(rng: np.random.Generator, frames: int, changes: int,
                 unique_last: bool = False) -> list[tuple[str, int]]:
    """``changes + 1`` runs ``(colour, frames)`` covering ``frames`` frames, consecutive colours different;
    with ``unique_last`` the last run's colour appears in no earlier run."""
    cuts = sorted(int(x) for x in rng.choice(np.arange(1, frames), size=changes, replace=False))
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, frames], strict=True)]
    colours: list[str] = []
    for i in range(changes + 1):
        banned = set(colours) if unique_last and i == changes else set(colours[-1:])
        colours.append(str(rng.choice([c for c in COLOURS if c not in banned])))
    return list(zip(colours, lengths, strict=True))


def _runs_sentence(runs: list[tuple[str, int]]) -> str:
    return "The square is " + ", then ".join(colour for colour, _ in runs) + "."


def _runs_scene(rng: np.random.Generator, canvas: Canvas, runs: list[tuple[str, int]]) -> Scene:
    cell = _cells(rng, canvas, 1)[0]
    return [[(colour, *cell)] for colour, length in runs for _ in range(length)]


def _runs_text(runs: list[tuple[str, int]]) -> str:
    """The runs as frame-by-frame text (the text variant's question): "Frame 1: red. Frames 2-3: green."."""
    parts, start = [], 1
    for colour, length in runs:
        frames = f"Frame {start}" if length == 1 else f"Frames {start}-{start + length - 1}"
        parts.append(f"{frames}: {colour}.")
        start += length
    return " ".join(parts)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _steps_changes(rng: np.random.Generator, frames: int, difficulty: int) -> int:
    low, high = (1, 2) if difficulty == 1 else ((1, 3) if difficulty == 2 else (2, 3))
    return int(rng.integers(low, min(high, frames - 1) + 1))


def task_colour_steps(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    runs = _colour_runs(rng, frames, _steps_changes(rng, frames, difficulty))
    scene = _runs_scene(rng, canvas, runs)
    changes = len(runs) - 1
    finding = f"{_runs_sentence(runs)} It changes colour {_times(changes)}."
    return Task("colour_steps", "The square changes colour. How many times?", "numerical", str(changes),
                _conclude(f"{_describe_frames(scene)} {finding}", str(changes), []), [], scene,
                difficulty=difficulty, brief=_conclude(finding, str(changes), []))


def task_colour_before(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    runs = _colour_runs(rng, frames, _steps_changes(rng, frames, difficulty), unique_last=True)
    scene = _runs_scene(rng, canvas, runs)
    last, before = runs[-1][0], runs[-2][0]
    options, letter = _multiple_choice(rng, before, [c for c in COLOURS if c != last], 2 if difficulty == 1 else 3,
                                       shuffle=difficulty >= 3)
    finding = f"{_runs_sentence(runs)} Before {last} it is {before}."
    return Task("colour_before", f"What colour is the square before it turns {last}?", "multiple choice", letter,
                _conclude(f"{_describe_frames(scene)} {finding}", letter, options), options, scene,
                difficulty=difficulty, brief=_conclude(finding, letter, options))


# ------------------------------------------------------------------------------------------ image tasks


def task_image_colour(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    colour, cell = str(rng.choice(list(COLOURS))), _cells(rng, canvas, 1)[0]
    options, letter = _multiple_choice(rng, colour, list(COLOURS), 2 if difficulty == 1 else 4, shuffle=difficulty >= 3)
    scene: Scene = [[(colour, *cell)]]
    reasoning = _conclude(f"The image shows a {colour} square at row {cell[0] + 1}, column {cell[1] + 1}.", letter, options)
    return Task("colour", "What colour is the square?", "multiple choice", letter, reasoning, options, scene,
                difficulty=difficulty, brief=_conclude(f"The square is {colour}.", letter, options))


def task_image_side(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    colour = str(rng.choice(list(COLOURS)))
    half = canvas.grid // 2
    side = str(rng.choice(["left", "right"]))
    col = int(rng.integers(0, half)) if side == "left" else int(rng.integers(half, canvas.grid))
    row = int(rng.integers(0, canvas.grid))
    options, letter = _multiple_choice(rng, side, ["left", "right"], 2, shuffle=difficulty >= 3)
    reasoning = _conclude(f"The image shows a {colour} square in column {col + 1} of {canvas.grid}, the {side} half.",
                          letter, options)
    return Task("side", f"Is the {colour} square on the left or the right?", "multiple choice", letter, reasoning,
                options, [[(colour, row, col)]], difficulty=difficulty,
                brief=_conclude(f"The {colour} square is on the {side}.", letter, options))


def task_image_count(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    task = task_count(rng, canvas, 1, 1)
    task.reasoning = task.reasoning.replace("Frame 1", "The image shows").replace(" Every frame shows", " That is")
    task.brief = task.brief.replace("Every frame shows", "The image shows")
    return task


def task_image_digit(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    task = task_digit(rng, canvas, 1, 1)
    task.problem = "What digit is written in the image?"
    task.reasoning = task.reasoning.replace("in every frame", "in the image")
    return task


# ------------------------------------------------------------------------------------------- text tasks


def task_text_add(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    hi = 5 if difficulty == 1 else 10
    a, b = int(rng.integers(0, hi)), int(rng.integers(0, hi))
    return Task("add", f"What is {a} + {b}?", "math", str(a + b), f"{a} + {b} = {a + b}. So the answer is {a + b}.")


def task_text_compare(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    a, b = (int(x) for x in rng.choice(10, size=2, replace=False))
    options = [f"A. {a}", f"B. {b}"]
    letter = "A" if a > b else "B"
    return Task("compare", "Which number is larger?", "multiple choice", letter, options=options,
                reasoning=_conclude(f"{max(a, b)} is larger than {min(a, b)}.", letter, options))


def task_text_move(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    start = int(rng.integers(1, 4))
    end = int(rng.integers(start + 1, 6))
    return Task("move", f"A square starts in column {start} and stops in column {end}. How many cells does it move?",
                "regression", str(end - start), _conclude(f"{end} - {start} = {end - start}.", str(end - start), []))


def task_text_change(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    before, after = _choice(rng, list(COLOURS), 2)
    answer = f"the square turns {after}"
    return Task("change", f"A square is {before} in the first frame and {after} in the last frame. "
                "Describe in a few words what happens.", "free-form", answer,
                _conclude(f"It starts {before} and ends {after}.", answer, []))


def _as_text(task: Task) -> Task:
    """A multi-step video task without pixels: its runs of colour given as text before the question, its brief
    chain as the reference (the steps are the same)."""
    assert task.scene is not None
    runs = [(colour, len(list(frames))) for colour, frames in itertools.groupby(objs[0][0] for objs in task.scene)]
    task.problem, task.reasoning, task.brief, task.scene = f"{_runs_text(runs)} {task.problem}", task.brief, "", None
    return task


def task_text_colour_steps(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    return _as_text(task_colour_steps(rng, canvas, frames, difficulty))


def task_text_colour_before(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    return _as_text(task_colour_before(rng, canvas, frames, difficulty))


TaskFn = Callable[[np.random.Generator, Canvas, int, int], Task]
TASKS: dict[str, dict[str, TaskFn]] = {
    "video": {"direction": task_direction, "appeared_first": task_appeared_first, "colour_change": task_colour_change,
              "count": task_count, "distance": task_distance, "describe": task_describe, "digit": task_digit,
              "colour_steps": task_colour_steps, "colour_before": task_colour_before},
    "image": {"colour": task_image_colour, "side": task_image_side, "count": task_image_count,
              "digit": task_image_digit},
    "text": {"add": task_text_add, "compare": task_text_compare, "move": task_text_move, "change": task_text_change,
             "colour_steps": task_text_colour_steps, "colour_before": task_text_colour_before},
}
MULTI_STEP = ("colour_steps", "colour_before")  # drawn only when named (see "multi-step tasks" above)
