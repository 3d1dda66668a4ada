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
from typing import Any, Self

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


def _worker_main(conn: Connection) -> None:
    conn.send(("ready",))
    while True:
        message = conn.recv()
        if message is None:
            return
        profile, chunk = message
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


class ScoringPool:
    """Worker processes kept alive across batches (a training loop scores every rollout batch; starting
    workers costs a second or two each time). Use as a context manager, or call :meth:`close`.

    Each item runs under a hard ``timeout_s``: a worker that exceeds it is killed, the item scores 0 with
    the reason "timeout", the rest of its chunk is re-sent to a fresh worker.
    """

    def __init__(self, workers: int = 2, *, timeout_s: float = 15.0, chunk_size: int = 64,
                 mp_context: str = "spawn") -> None:  # fmt: skip
        if workers < 1:
            raise ValueError(f"ScoringPool: workers={workers}; expected at least 1 (use score_batch(workers=0) inline)")
        self.timeout_s, self.chunk_size = timeout_s, chunk_size
        self._ctx = mp.get_context(mp_context)
        self._mp_context = mp_context
        self._startup_failures = 0
        self._pool = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (killing any that do not stop within 2 s)."""
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._pool = []

    def score(self, completions: Sequence[str], samples: Sequence[Sample], profile: ScoringProfile | str,
              *, progress: bool = False) -> ScoredBatch:  # fmt: skip
        """Score ``completions[i]`` against ``samples[i]``; see :class:`ScoredBatch`."""
        _check_lengths(completions, samples)
        profile = get_profile(profile) if isinstance(profile, str) else profile
        if not self._pool:
            raise RuntimeError("ScoringPool.score: the pool is closed")
        n = len(completions)
        results: list[dict[str, float] | None] = [None] * n
        failures: Counter[str] = Counter()
        queue: deque[list[int]] = deque(list(range(i, min(i + self.chunk_size, n))) for i in range(0, n, self.chunk_size))
        remaining = n
        with _progress(progress, n) as advance:

            def give_up(worker: _Worker, reason: str) -> None:
                # The item being scored fails; the rest of the chunk is scored again by a fresh worker.
                nonlocal remaining
                self._replace(worker)
                if worker.inflight:
                    results[worker.inflight.popleft()] = profile.zero()
                    failures[reason] += 1
                    remaining -= 1
                    advance()
                if worker.inflight:
                    queue.appendleft(list(worker.inflight))

            while remaining:
                for worker in self._pool:
                    if worker.ready and not worker.inflight and queue:
                        chunk = queue.popleft()
                        worker.conn.send((profile, [(i, completions[i], samples[i]) for i in chunk]))
                        worker.inflight.extend(chunk)
                        worker.last_progress = time.monotonic()
                for conn in wait([w.conn for w in self._pool], timeout=min(1.0, self.timeout_s)):
                    worker = next(w for w in self._pool if w.conn is conn)
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
                for worker in list(self._pool):
                    if worker.inflight and now - worker.last_progress > self.timeout_s:
                        give_up(worker, "timeout")
        return ScoredBatch([r if r is not None else profile.zero() for r in results], failures)

    def _replace(self, worker: _Worker) -> None:
        if not worker.ready:
            self._startup_failures += 1
            if self._startup_failures >= 3:
                self.close()
                raise RuntimeError(
                    f"score_batch: scoring workers ({self._mp_context}) died {self._startup_failures} times before "
                    "starting; check that veripo.rewards imports in a fresh process, or pass workers=0"
                )
        worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._pool[self._pool.index(worker)] = self._start()


def _check_lengths(completions: Sequence[str], samples: Sequence[Sample]) -> None:
    if len(completions) != len(samples):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(samples)} samples; expected equal")


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
    pool: ScoringPool | None = None,
) -> ScoredBatch:
    """Score ``completions[i]`` against ``samples[i]`` with ``profile``; see :class:`ScoredBatch`.

    Args:
        workers: processes to start for this call (None: up to 2, bounded by the CPU count and the work;
            0: score in this process, without the hard timeout). Ignored when ``pool`` is given.
        timeout_s: the longest one item may take in a worker before the worker is killed.
        mp_context: multiprocessing start method; "spawn" is safe next to threads (torch, tokenizers).
        progress: show a rich progress bar.
        pool: a running :class:`ScoringPool` to use instead of starting workers.
    """
    _check_lengths(completions, samples)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    if pool is not None:
        return pool.score(completions, samples, profile, progress=progress)
    n = len(completions)
    if workers is None:
        workers = min(2, os.cpu_count() or 1, max(1, n // chunk_size))
    if workers and n:
        with ScoringPool(workers, timeout_s=timeout_s, chunk_size=chunk_size, mp_context=mp_context) as own:
            return own.score(completions, samples, profile, progress=progress)
    failures: Counter[str] = Counter()
    results = []
    with _progress(progress, n) as advance:
        for completion, sample in zip(completions, samples):
            scores, reason = _score_one(profile, completion, sample)
            results.append(scores)
            if reason:
                failures[reason] += 1
            advance()
    return ScoredBatch(results, failures)


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
