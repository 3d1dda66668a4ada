"""Synthetic video reasoning tasks: the embedded data for the demo and the tests.

Small videos (4-16 frames, 56-112 px, 2 fps so the default 2 fps sampler sees every frame) of solid-colour
squares, one grid cell each, on black: they move, appear, disappear or change colour. Every problem type
the rewards score is covered (multiple choice, numerical, regression, OCR, free-form, math), with gold
answers, a difficulty level (1-3) and a reference chain of thought that states what each frame shows and
concludes with the answer; the reference completion is ``<think>{reasoning}</think><answer>{answer}</answer>``.
Image (one frame, PNG) and text-only variants serve the reasoning-activation stage.

Designed for a ~1.5M-parameter model to learn on a CPU in minutes: squares are whole 28 px cells (2x2
patches of 14 px), four colours, 2-4 options, answers of one letter, a small number or a few words from a
vocabulary of about 30 words. Deterministic: sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from veripo.data.loaders import DATASET_FILE

COLOURS: dict[str, tuple[int, int, int]] = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
                                            "yellow": (240, 220, 40)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
LETTERS = "ABCD"
FPS = 2  # frames per second written: the default sampler (2 fps) then keeps every frame
# 3x5 bitmaps of the digits, drawn in white blocks of half a cell (one 14 px patch each).
_DIGITS = ["111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
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
    lines = []
    for t, objs in enumerate(scene):
        seen = "; ".join(_where(o) for o in sorted(objs, key=lambda o: (o[1], o[2]))) or "nothing"
        lines.append(f"Frame {t + 1}: {seen}.")
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
        return f"{observation} The option that matches is {answer}, so the answer is {answer}."
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
    reasoning = _conclude(f"{_describe_frames(scene)} The {colour} square moves {direction}.", letter, options)
    return Task("direction", f"In which direction does the {colour} square move?", "multiple choice", letter,
                reasoning, options, scene, difficulty=difficulty)


def task_appeared_first(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    k = 2 if difficulty < 3 else 3
    colours = _choice(rng, list(COLOURS), k)
    cells = _cells(rng, canvas, k)
    onsets = sorted(int(x) for x in rng.choice(np.arange(frames - 1), size=k, replace=False))
    scene: Scene = [[(c, *cells[i]) for i, c in enumerate(colours) if t >= onsets[i]] for t in range(frames)]
    options, letter = _multiple_choice(rng, colours[0], colours, k, shuffle=difficulty >= 2)
    reasoning = _conclude(f"{_describe_frames(scene)} The {colours[0]} square is the first to appear, in frame "
                          f"{onsets[0] + 1}.", letter, options)
    return Task("appeared_first", "Which square appears first?", "multiple choice", letter, reasoning, options,
                scene, difficulty=difficulty)


def task_colour_change(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    before, after = _choice(rng, list(COLOURS), 2)
    cell = _cells(rng, canvas, 1)[0]
    switch = int(rng.integers(1, frames))
    scene: Scene = [[(before if t < switch else after, *cell)] for t in range(frames)]
    options, letter = _multiple_choice(rng, after, list(COLOURS), 2 if difficulty == 1 else 4, shuffle=difficulty >= 3)
    reasoning = _conclude(f"{_describe_frames(scene)} The square turns from {before} to {after} in frame "
                          f"{switch + 1}.", letter, options)
    return Task("colour_change", f"The {before} square changes colour. What colour does it become?",
                "multiple choice", letter, reasoning, options, scene, difficulty=difficulty)


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
    return Task("count", question, "numerical", str(n), reasoning, [], scene, difficulty=difficulty)


def task_distance(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    directions = ("left", "right") if difficulty == 1 else tuple(DIRECTIONS)
    colour, direction, cells, path = _mover(rng, canvas, frames, directions, canvas.grid - 1)
    scene: Scene = [[(colour, r, c)] for r, c in path]
    unit = "cells" if difficulty < 3 else "pixels"
    answer = str(cells if unit == "cells" else cells * canvas.cell)
    extra = "" if unit == "cells" else f" One cell is {canvas.cell} pixels, so it moves {cells} x {canvas.cell} pixels."
    reasoning = _conclude(f"{_describe_frames(scene)} The {colour} square moves {cells} cells {direction}.{extra}",
                          answer, [])
    return Task("distance", f"How many {unit} does the {colour} square move?", "regression", answer, reasoning,
                [], scene, difficulty=difficulty)


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
                [], scene, difficulty=difficulty)


def task_digit(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    digit = int(rng.integers(0, 10))
    shown = list(range(frames)) if difficulty == 1 else [int(rng.integers(0, frames))]
    seen = "every frame" if difficulty == 1 else f"frame {shown[0] + 1}"
    reasoning = _conclude(f"A white digit is drawn in {seen}. Its strokes form a {digit}.", str(digit), [])
    return Task("digit", "What digit is written in the video?", "OCR", str(digit), reasoning, [],
                [[] for _ in range(frames)], digit=(digit, shown), difficulty=difficulty)


# ------------------------------------------------------------------------------------------ image tasks


def task_image_colour(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    colour, cell = str(rng.choice(list(COLOURS))), _cells(rng, canvas, 1)[0]
    options, letter = _multiple_choice(rng, colour, list(COLOURS), 2 if difficulty == 1 else 4, shuffle=difficulty >= 2)
    scene: Scene = [[(colour, *cell)]]
    reasoning = _conclude(f"The image shows a {colour} square at row {cell[0] + 1}, column {cell[1] + 1}.", letter, options)
    return Task("colour", "What colour is the square?", "multiple choice", letter, reasoning, options, scene,
                difficulty=difficulty)


def task_image_side(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    colour = str(rng.choice(list(COLOURS)))
    half = canvas.grid // 2
    side = str(rng.choice(["left", "right"]))
    col = int(rng.integers(0, half)) if side == "left" else int(rng.integers(half, canvas.grid))
    row = int(rng.integers(0, canvas.grid))
    options, letter = _multiple_choice(rng, side, ["left", "right"], 2, shuffle=difficulty >= 2)
    reasoning = _conclude(f"The image shows a {colour} square in column {col + 1} of {canvas.grid}, the {side} half.",
                          letter, options)
    return Task("side", f"Is the {colour} square on the left or the right?", "multiple choice", letter, reasoning,
                options, [[(colour, row, col)]], difficulty=difficulty)


def task_image_count(rng: np.random.Generator, canvas: Canvas, frames: int, difficulty: int) -> Task:
    task = task_count(rng, canvas, 1, 1)
    task.reasoning = task.reasoning.replace("Frame 1", "The image shows").replace(" Every frame shows", " That is")
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


TaskFn = Callable[[np.random.Generator, Canvas, int, int], Task]
TASKS: dict[str, dict[str, TaskFn]] = {
    "video": {"direction": task_direction, "appeared_first": task_appeared_first, "colour_change": task_colour_change,
              "count": task_count, "distance": task_distance, "describe": task_describe, "digit": task_digit},
    "image": {"colour": task_image_colour, "side": task_image_side, "count": task_image_count,
              "digit": task_image_digit},
    "text": {"add": task_text_add, "compare": task_text_compare, "move": task_text_move, "change": task_text_change},
}


# ---------------------------------------------------------------------------------------------- render


def render(task: Task, canvas: Canvas) -> np.ndarray:
    """Frames of a task's scene: (T, size, size, 3) uint8, black background, one square per object."""
    assert task.scene is not None
    frames = np.zeros((len(task.scene), canvas.size, canvas.size, 3), dtype=np.uint8)
    c = canvas.cell
    for t, objs in enumerate(task.scene):
        for colour, r, col in objs:
            frames[t, r * c:(r + 1) * c, col * c:(col + 1) * c] = COLOURS[colour]
    if task.digit is not None:
        digit, shown = task.digit
        block = max(2, canvas.size // 8)  # 3x5 blocks centred
        top, left = (canvas.size - 5 * block) // 2, (canvas.size - 3 * block) // 2
        for t in shown:
            for i, bit in enumerate(_DIGITS[digit]):
                if bit == "1":
                    y, x = top + (i // 3) * block, left + (i % 3) * block
                    frames[t, y:y + block, x:x + block] = 255
    return frames


def _video_codec() -> str:
    import av

    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise RuntimeError("this PyAV build can encode neither h264 nor mpeg4")


def write_mp4(frames: np.ndarray, path: Path, fps: int = FPS, codec: str | None = None) -> None:
    """Encode (T, H, W, 3) uint8 frames as an mp4 (h264 when available, else mpeg4), near-lossless."""
    import av

    codec = codec or _video_codec()
    tmp = path.with_name(f".tmp-{path.name}")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1  # deterministic output
        stream.options = {"preset": "ultrafast", "crf": "12"} if "264" in codec else {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- generation


def generate_task(seed: int, index: int, kind: str, *, canvas: Canvas, frames: tuple[int, int],
                  difficulties: Sequence[int], tasks: Sequence[str] | None = None, cycle: int | None = None) -> Task:
    """The ``index``-th task of a dataset: depends only on (seed, index, kind, settings).

    The task name cycles with ``cycle`` (default ``index``) so that each task is equally common."""
    rng = np.random.default_rng([seed, index])
    names = [t for t in (tasks or TASKS[kind]) if t in TASKS[kind]] or list(TASKS[kind])
    name = names[(index if cycle is None else cycle) % len(names)]
    lo, hi = frames
    n_frames = int(rng.integers(lo // 2, hi // 2 + 1)) * 2  # even, as Qwen's video sampler needs
    difficulty = int(rng.choice(list(difficulties)))
    return TASKS[kind][name](rng, canvas, n_frames, difficulty)


def make_synthetic(out_dir: str | os.PathLike[str], n: int = 300, seed: int = 0,
                   kinds: Sequence[str] = ("video", "image", "text"), *, size: int = 112,
                   frames: tuple[int, int] = (4, 8), difficulties: Sequence[int] = (1, 2),
                   tasks: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Write a synthetic dataset folder: ``dataset.json`` (Video-R1 format) and ``media/`` (mp4, png).

    Args:
        n: number of samples; kinds alternate (sample i has kind ``kinds[i % len(kinds)]``).
        size: frame side in pixels (a multiple of 28, 56..112 advised); frames: (min, max) frames per video,
            even numbers in 2..16; difficulties: levels to draw from (1 easy .. 3 hard).
        tasks: restrict to these task names (see TASKS); None = all of each kind.
    Returns: the folder, loadable with ``load_samples(folder)``.
    """
    from PIL import Image

    unknown = [k for k in kinds if k not in TASKS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; expected some of {list(TASKS)}")
    if size % 28 or not 28 <= size <= 448:
        raise ValueError(f"size must be a multiple of 28 in 28..448, got {size}")
    if not (2 <= frames[0] <= frames[1] <= 16):
        raise ValueError(f"frames must be (min, max) with 2 <= min <= max <= 16, got {frames}")
    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    canvas, codec = Canvas(size=size), _video_codec()
    rows = []
    with _progress(progress, n) as advance:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            task = generate_task(seed, i, kind, canvas=canvas, frames=frames, difficulties=difficulties, tasks=tasks,
                                 cycle=i // len(kinds))
            row = {"problem_id": i, "problem": task.problem, "problem_type": task.problem_type,
                   "options": task.options, "solution": f"<answer>{task.answer}</answer>",
                   "process": f"<think>{task.reasoning}</think>", "data_type": kind, "difficulty": task.difficulty,
                   "task": task.name, "data_source": f"synthetic/seed{seed}"}
            if kind == "video":
                row["path"] = f"media/{i:06d}.mp4"
                write_mp4(render(task, canvas), out / row["path"], codec=codec)
            elif kind == "image":
                row["path"] = f"media/{i:06d}.png"
                Image.fromarray(render(task, canvas)[0]).save(out / row["path"])
            rows.append(row)
            advance()
    tmp = out / f".tmp-{DATASET_FILE}"
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / DATASET_FILE)
    (out / "README.md").write_text(f"Synthetic veripo dataset: n={n} seed={seed} kinds={list(kinds)} size={size} "
                                   f"frames={list(frames)} difficulties={list(difficulties)}\n", encoding="utf-8")
    return out


class _progress:
    """A rich progress bar when asked (the CLI), nothing otherwise (tests, the demo's own bar)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.start()
        task = self._bar.add_task("rendering samples", total=self.total)
        return lambda: self._bar.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
