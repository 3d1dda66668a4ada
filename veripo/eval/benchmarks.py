"""Benchmark settings: frames, pixels, prompt and scoring per benchmark, chosen by the benchmark's name.

Defaults are VerIPO's released evaluation settings (../shared/reference/VERIPO.md, "Evaluation"): video at
2 fps (TOMATO at 4 fps), at most 128 frames, at most 256*28*28 pixels per frame, greedy decoding with
repetition penalty 1.05. The minimum frame count and pixel budget follow qwen-vl-utils (``FPS_MIN_FRAMES = 4``,
``VIDEO_MIN_PIXELS = 128*28*28``), which both peers' evaluation scripts use. Video-R1's published numbers
were taken with at most 32 frames: ``veripo eval --max-frames 32 --prompt videor1`` reproduces that setting.

A benchmark is recognised from its file name (``eval_vsibench.json``, ``veripo_tomato.json``,
``vsi_bench.json`` ...) through :data:`BENCHMARKS`; unknown names get the defaults. Every setting can be
overridden (``settings_for(name, fps=4)``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from veripo.config import MediaConfig
from veripo.data.records import Sample
from veripo.rewards import extract_number

VERIPO_FPS = 2.0
VERIPO_MAX_FRAMES = 128
VERIPO_MAX_PIXELS = 256 * 28 * 28
QWEN_MIN_FRAMES = 4
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28


@dataclass(frozen=True)
class BenchmarkSettings:
    """How one benchmark is evaluated.

    Attributes:
        key: the canonical benchmark name (``vsi_bench``, ``tomato`` ...); also names the VerIPO-format
            export, whose scorer switches to MRA when the file name contains ``vsi_bench``.
        fps, max_frames, min_frames, min_pixels, max_pixels: video sampling (per frame pixels).
        numeric_type: the problem type given to VerIPO-format questions without options whose gold answer is
            a number (that format has no ``problem_type`` field): ``regression`` scores them by MRA
            (VSI-Bench), ``numerical`` by exact value.
        description: where the settings come from.
    """

    key: str
    fps: float = VERIPO_FPS
    max_frames: int = VERIPO_MAX_FRAMES
    min_frames: int = QWEN_MIN_FRAMES
    min_pixels: int = QWEN_VIDEO_MIN_PIXELS
    max_pixels: int = VERIPO_MAX_PIXELS
    numeric_type: str = "numerical"
    description: str = "VerIPO defaults"

    def media_config(self, cache_dir: str | None = None) -> MediaConfig:
        """These settings as the ``MediaConfig`` the sample encoder reads."""
        cfg = MediaConfig(fps=self.fps, max_frames=self.max_frames, min_frames=self.min_frames,
                          min_pixels=self.min_pixels, max_pixels=self.max_pixels, cache_dir=cache_dir)
        cfg.validate("eval.media")
        return cfg


# Canonical key -> (name aliases as they appear in file names, settings).
BENCHMARKS: dict[str, tuple[tuple[str, ...], BenchmarkSettings]] = {
    "vsi_bench": (("vsibench", "vsi_bench", "vsi-bench"),
                  BenchmarkSettings("vsi_bench", numeric_type="regression",
                                    description="VerIPO defaults; numeric answers scored by MRA (VSI-Bench)")),
    "tomato": (("tomato",), BenchmarkSettings("tomato", fps=4.0, description="VerIPO: TOMATO at 4 fps")),
    "videommmu": (("videommmu", "video_mmmu", "video-mmmu"), BenchmarkSettings("videommmu")),
    "mmvu": (("mmvu",), BenchmarkSettings("mmvu")),
    "video_mme": (("videomme", "video_mme", "video-mme"), BenchmarkSettings("video_mme")),
    "lvbench": (("lvbench",), BenchmarkSettings("lvbench")),
    "mvbench": (("mvbench",), BenchmarkSettings("mvbench")),
    "tempcompass": (("tempcompass",), BenchmarkSettings("tempcompass")),
}


def benchmark_name(path: str | Path) -> str:
    """A short name for a benchmark file or dataset folder: the stem without ``eval_``/``veripo_`` prefixes
    (``eval_mmvu.json`` -> ``eval_mmvu``: the prefix is kept so two formats of one benchmark do not share an
    output folder)."""
    path = Path(path)
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "benchmark"


def find_benchmark(name: str) -> str | None:
    """The canonical key whose alias occurs in ``name`` (case-insensitive), or None."""
    low = name.lower()
    # Longer aliases first, so that "videommmu" is not taken for "mmvu"-like substrings of other names.
    aliases = sorted(((alias, key) for key, (names, _) in BENCHMARKS.items() for alias in names),
                     key=lambda pair: -len(pair[0]))
    for alias, key in aliases:
        if alias in low:
            return key
    return None


def settings_for(name: str, **overrides: float | str | None) -> BenchmarkSettings:
    """The settings of the benchmark called (or whose file is called) ``name``, with ``overrides`` applied
    (None values are ignored). Unknown names get the VerIPO defaults under the key ``name``."""
    key = find_benchmark(name)
    settings = BENCHMARKS[key][1] if key else BenchmarkSettings(name, description="VerIPO defaults (unknown benchmark)")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(BenchmarkSettings)}
    if unknown:
        raise ValueError(f"unknown benchmark setting(s) {sorted(unknown)}; expected some of "
                         f"{[f.name for f in dataclasses.fields(BenchmarkSettings)]}")
    if "max_pixels" in given and "min_pixels" not in given:
        # A smaller pixel budget than the default minimum lowers the minimum with it.
        given["min_pixels"] = min(settings.min_pixels, int(given["max_pixels"]))
    return dataclasses.replace(settings, **given) if given else settings


def assign_numeric_types(samples: list[Sample], settings: BenchmarkSettings) -> int:
    """Give VerIPO-format numeric questions their problem type, in place; returns how many changed.

    The VerIPO evaluation JSON has no problem type: the loader marks a question without options
    ``free-form``. A gold answer that is a number makes it ``settings.numeric_type`` (``regression`` on
    VSI-Bench, so it is scored by MRA as VerIPO's scorer does; ``numerical`` elsewhere), which also selects
    the prompt's "the answer must be a number" sentence.
    """
    changed = 0
    for sample in samples:
        if "processed_question" not in sample.extra or sample.options or sample.problem_type != "free-form":
            continue
        if extract_number(sample.answer) is not None and re.fullmatch(r"\s*\$?[-+]?[\d.,]+\$?\s*", sample.answer):
            sample.problem_type = settings.numeric_type
            changed += 1
    return changed
