"""Pieces every recipe shares: seeding, the learning-rate schedule, device choice, progress bars, a clock."""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from the run seed and any keys (stage name, step, ...): stable across runs and
    processes, so resumed work draws exactly the random numbers the uninterrupted run drew."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then constant, cosine (to 0) or linear (to 0) over ``total_steps``."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator["ProgressHandle"]:
    """A rich progress bar; ``handle.advance(n, **fields)`` moves it and shows the latest metrics.
    ``total=None``: an open-ended bar (count and elapsed time, no time remaining)."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")
        yield ProgressHandle(bar, task)


class ProgressHandle:
    def __init__(self, bar: Progress, task: int) -> None:
        self.bar, self.task = bar, task

    def advance(self, n: int = 1, **fields: float) -> None:
        info = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self.bar.update(self.task, advance=n, info=info)

    def set_completed(self, n: int) -> None:
        self.bar.update(self.task, completed=n)


class Stopwatch:
    def __init__(self, offset: float = 0.0) -> None:
        self.start = time.perf_counter() - offset

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def open_vision_cache(model: torch.nn.Module, settings: Any, spill_dir: Path, shards_weights: bool) -> str:
    """Serve ``model``'s vision tower from a new visual feature cache per ``settings`` (``cfg.model``'s
    ``vision_cache*`` keys), spilling to ``spill_dir``; a line saying so (empty when it is off)."""
    from veripo.models.vision_cache import VisionFeatureCache, use_vision_cache

    if not settings.vision_cache:
        use_vision_cache(model, None)
        return ""
    if shards_weights:  # a rank holds a shard of the tower: every rank must run it in every pass
        use_vision_cache(model, None)
        return "visual feature cache: off under weight sharding"
    disk = settings.vision_cache_disk_gib or 0.0
    use_vision_cache(model, VisionFeatureCache(int(settings.vision_cache_memory_gib * 2**30), int(disk * 2**30),
                                               spill_dir if disk else None))
    spill = f", spill to {spill_dir} up to {disk:g} GiB" if disk else ""
    return f"visual feature cache: {settings.vision_cache_memory_gib:g} GiB in memory{spill}"
