"""Synthetic video reasoning tasks: the embedded data for the demo and the tests.

Small videos (4-16 frames, 56-112 px, 2 fps so the default 2 fps sampler sees every frame) of solid-colour
squares, one grid cell each, on black: they move, appear, disappear or change colour. Every problem type
the rewards score is covered (multiple choice, numerical, regression, OCR, free-form, math), with gold
answers, a difficulty level (1-3) and a reference chain of thought that states what each frame shows and
concludes with the answer (``chain="brief"``: only the finding and the answer); the reference completion
is ``<think>{reasoning}</think><answer>{answer}</answer>``.
Image (one frame, PNG) and text-only variants serve the reasoning-activation stage.

Designed for a ~1.5M-parameter model to learn on a CPU in minutes: squares are whole 28 px cells (2x2
patches of 14 px), four colours, 2-4 options, answers of one letter, a small number or a few words from a
vocabulary of about 30 words. Deterministic: sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from veripo.data.loaders import DATASET_FILE
from veripo.data.synthetic_tasks import COLOURS, DIGIT_BITMAPS, FPS, MULTI_STEP, TASKS, Canvas, Task

CHAINS = ("frames", "brief")  # reference chain styles, see make_synthetic

__all__ = ["COLOURS", "MULTI_STEP", "TASKS", "Canvas", "Task", "generate_task", "make_synthetic", "render",
           "synthetic_corpus", "write_mp4"]


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
            for i, bit in enumerate(DIGIT_BITMAPS[digit]):
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


def check_settings(size: int, frames: tuple[int, int], difficulties: Sequence[int]) -> None:
    """Raise ValueError for settings the tasks cannot be drawn with (a grid of at least 2x2 cells, videos
    of 4-16 frames so that three squares can appear one after another)."""
    if size % 28 or not 56 <= size <= 448:
        raise ValueError(f"size must be a multiple of 28 in 56..448, got {size}")
    if len(frames) != 2 or not 4 <= frames[0] <= frames[1] <= 16:
        raise ValueError(f"frames must be (min, max) with 4 <= min <= max <= 16, got {tuple(frames)}")
    if not difficulties or any(d not in (1, 2, 3) for d in difficulties):
        raise ValueError(f"difficulties must be levels among 1, 2, 3, got {list(difficulties)}")


def generate_task(seed: int, index: int, kind: str, *, canvas: Canvas, frames: tuple[int, int],
                  difficulties: Sequence[int], tasks: Sequence[str] | None = None, cycle: int | None = None) -> Task:
    """The ``index``-th task of a dataset: depends only on (seed, index, kind, settings).

    The task name cycles with ``cycle`` (default ``index``) so that each task is equally common."""
    rng = np.random.default_rng([seed, index])
    default = [t for t in TASKS[kind] if t not in MULTI_STEP]  # the multi-step family only when named
    names = [t for t in (tasks or default) if t in TASKS[kind]] or default
    name = names[(index if cycle is None else cycle) % len(names)]
    lo, hi = frames
    n_frames = int(rng.integers(lo // 2, hi // 2 + 1)) * 2  # even, as Qwen's video sampler needs
    difficulty = int(rng.choice(list(difficulties)))
    return TASKS[kind][name](rng, canvas, n_frames, difficulty)


def synthetic_corpus(n_per_kind: int = 200, seed: int = 0, *, size: int = 112, frames: tuple[int, int] = (4, 8),
                     difficulties: Sequence[int] = (1, 2, 3)) -> list[str]:
    """The text of generated tasks (question, options, reference completion), without rendering anything:
    for training a small tokenizer on exactly the vocabulary the synthetic tasks use."""
    check_settings(size, frames, difficulties)
    lines = []
    for kind in TASKS:
        for i in range(n_per_kind):
            task = generate_task(seed, i, kind, canvas=Canvas(size=size), frames=frames, difficulties=difficulties)
            lines += [task.problem, *task.options, f"<think>{task.reasoning}</think><answer>{task.answer}</answer>"]
    return lines


def make_synthetic(out_dir: str | os.PathLike[str], n: int = 300, seed: int = 0,
                   kinds: Sequence[str] = ("video", "image", "text"), *, size: int = 112,
                   frames: tuple[int, int] = (4, 8), difficulties: Sequence[int] = (1, 2),
                   tasks: Sequence[str] | None = None, chain: str = "frames", progress: bool = False) -> Path:
    """Write a synthetic dataset folder: ``dataset.json`` (Video-R1 format) and ``media/`` (mp4, png).

    Args:
        n: number of samples; kinds alternate (sample i has kind ``kinds[i % len(kinds)]``).
        size: frame side in pixels (a multiple of 28, 56..112 advised); frames: (min, max) frames per video,
            even numbers in 2..16; difficulties: levels to draw from (1 easy .. 3 hard).
        tasks: restrict to these task names (see TASKS; an unknown name is an error); a kind with none of
            them keeps its default; None = the default of each kind: all of its tasks but the multi-step
            family (``MULTI_STEP``: colour_steps, colour_before), drawn only when named.
        chain: the reference chain of thought written as ``process``: "frames" describes every frame before
            the finding, "brief" states the finding only (``veripo.data.synthetic_tasks`` says why).
    Returns: the folder, loadable with ``load_samples(folder)``.
    """
    from PIL import Image

    unknown = [k for k in kinds if k not in TASKS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; expected some of {list(TASKS)}")
    check_settings(size, frames, difficulties)
    known = {name for by_name in TASKS.values() for name in by_name}
    misspelt = sorted(set(tasks or ()) - known)
    if misspelt:
        raise ValueError(f"unknown tasks {misspelt}; expected some of {sorted(known)}")
    if chain not in CHAINS:
        raise ValueError(f"unknown chain style {chain!r}; expected one of {list(CHAINS)}")
    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    canvas, codec = Canvas(size=size), _video_codec()
    rows = []
    with _progress(progress, n) as advance:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            task = generate_task(seed, i, kind, canvas=canvas, frames=frames, difficulties=difficulties, tasks=tasks,
                                 cycle=i // len(kinds))
            thinking = task.brief if chain == "brief" and task.brief else task.reasoning
            row = {"problem_id": i, "problem": task.problem, "problem_type": task.problem_type,
                   "options": task.options, "solution": f"<answer>{task.answer}</answer>",
                   "process": f"<think>{thinking}</think>", "data_type": kind, "difficulty": task.difficulty,
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
                                   f"frames={list(frames)} difficulties={list(difficulties)} chain={chain}\n",
                                   encoding="utf-8")
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
