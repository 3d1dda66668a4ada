"""Score many completions in worker processes, each item under a hard timeout.

math-verify's own timeout is ``signal.alarm``: it works only in a main thread and cannot interrupt C code.
Here every worker is a separate process (so the alarm works inside it), and the parent kills a worker
whose current item runs past ``timeout_s``: that item scores 0 with the reason "timeout", the rest of its
chunk goes to a fresh worker, and the run never blocks.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from veripo.data.records import Sample
from veripo.rewards.profiles import ScoringProfile, get_profile


class ScoredBatch(list):  # list[dict[str, float]]
    """Scores in input order, plus ``failures``: counts of why items scored 0 without being judged
    ("timeout", "worker died", "error: ValueError", ...)."""

    failures: Counter[str]

    def __init__(self, scores: list[dict[str, float]], failures: Counter[str]) -> None:
        super().__init__(scores)
        self.failures = failures


def _score_one(profile: ScoringProfile, completion: str, sample: Sample) -> tuple[dict[str, float], str | None]:
    try:
        return profile.score(completion, sample), None
    except Exception as e:  # noqa: BLE001 - a bad item must not stop a batch; it is counted instead
        return profile.zero(), f"error: {type(e).__name__}"


def _worker_main(conn: Connection, profile: ScoringProfile) -> None:
    conn.send(("ready",))
    while True:
        chunk = conn.recv()
        if chunk is None:
            return
        for index, completion, sample in chunk:
            scores, reason = _score_one(profile, completion, sample)
            conn.send((index, scores, reason))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    ready: bool = False
    inflight: deque = field(default_factory=deque)  # indices sent and not yet answered, in order
    last_progress: float = 0.0


def score_batch(
    completions: Sequence[str],
    samples: Sequence[Sample],
    profile: ScoringProfile | str,
    *,
    workers: int | None = None,
    timeout_s: float = 15.0,
    chunk_size: int = 64,
    mp_context: str = "spawn",
    progress: bool = False,
) -> ScoredBatch:
    """Score ``completions[i]`` against ``samples[i]`` with ``profile``; see :class:`ScoredBatch`.

    Args:
        workers: processes to use (None: up to 2, bounded by the CPU count and the work; 0: score in this
            process, without the hard timeout).
        timeout_s: the longest one item may take in a worker before the worker is killed.
        mp_context: multiprocessing start method; "spawn" is safe next to threads (torch, tokenizers).
        progress: show a rich progress bar.
    """
    if len(completions) != len(samples):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(samples)} samples; expected equal")
    if isinstance(profile, str):
        profile = get_profile(profile)
    n = len(completions)
    if workers is None:
        workers = min(2, os.cpu_count() or 1, max(1, n // chunk_size))
    failures: Counter[str] = Counter()
    results: list[dict[str, float] | None] = [None] * n
    with _progress(progress, n) as advance:
        if workers == 0 or n == 0:
            for i in range(n):
                results[i], reason = _score_one(profile, completions[i], samples[i])
                if reason:
                    failures[reason] += 1
                advance()
        else:
            _score_in_workers(completions, samples, profile, workers, timeout_s, chunk_size, mp_context,
                              results, failures, advance)  # fmt: skip
    return ScoredBatch([r if r is not None else profile.zero() for r in results], failures)


def _score_in_workers(
    completions: Sequence[str],
    samples: Sequence[Sample],
    profile: ScoringProfile,
    n_workers: int,
    timeout_s: float,
    chunk_size: int,
    mp_context: str,
    results: list[dict[str, float] | None],
    failures: Counter[str],
    advance: Any,
) -> None:
    ctx = mp.get_context(mp_context)
    queue: deque[list[int]] = deque(
        list(range(i, min(i + chunk_size, len(results)))) for i in range(0, len(results), chunk_size)
    )

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, profile), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    pool = [start() for _ in range(n_workers)]
    remaining = len(results)
    startup_failures = 0

    def give_up(worker: _Worker, reason: str) -> None:
        # The item being scored fails; the rest of the chunk is scored again by a fresh worker.
        nonlocal remaining, startup_failures
        if not worker.ready:
            startup_failures += 1
            if startup_failures >= 3:
                raise RuntimeError(
                    f"score_batch: scoring workers ({mp_context}) died {startup_failures} times before starting; "
                    "check that veripo.rewards imports in a fresh process, or pass workers=0"
                )
        if worker.inflight:
            index = worker.inflight.popleft()
            results[index] = profile.zero()
            failures[reason] += 1
            remaining -= 1
            advance()
        if worker.inflight:
            queue.appendleft(list(worker.inflight))
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        pool[pool.index(worker)] = start()

    try:
        while remaining:
            for worker in pool:
                if worker.ready and not worker.inflight and queue:
                    chunk = queue.popleft()
                    worker.conn.send([(i, completions[i], samples[i]) for i in chunk])
                    worker.inflight.extend(chunk)
                    worker.last_progress = time.monotonic()
            for conn in wait([w.conn for w in pool], timeout=min(1.0, timeout_s)):
                worker = next(w for w in pool if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    give_up(worker, "worker died")
                    continue
                if message == ("ready",):
                    worker.ready = True
                    continue
                index, scores, reason = message
                results[index] = scores
                if reason:
                    failures[reason] += 1
                worker.inflight.remove(index)
                worker.last_progress = time.monotonic()
                remaining -= 1
                advance()
            now = time.monotonic()
            for worker in list(pool):
                if worker.inflight and now - worker.last_progress > timeout_s:
                    give_up(worker, "timeout")
    finally:
        for worker in pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in pool:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


class _progress:
    """A rich progress bar (or nothing) exposing ``advance()``."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=False)
        self.bar.start()
        task = self.bar.add_task("scoring", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
