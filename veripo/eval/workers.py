"""Extra local processes that decode a share of an evaluation's batches: a one-process CPU run uses its other cores.

Greedy decoding of a small model gains nothing from intra-op threads (the kernels are too small: 256 held-out
videos of the demo took 28 s on one thread and 25 s on two, the same predictions), but a second process decodes
a second batch at full speed. ``DecodeWorkers(n, model_dir)`` spawns ``n`` processes (spawned, never forked: the
parent's OpenMP pool does not survive a fork), each loading the model directory once. At every evaluation the
parent sends them the current weights (``torch.save`` bytes, read back with ``weights_only=True``) and the
prompt encoder (each only when changed since the last evaluation), then whole batches, consecutive ones to
the parent and each live worker in turn, so every batch is decoded exactly as one process decodes it and the predictions are the same bits as
without workers (``tests/eval/test_decode_workers_on_cpu.py``). A worker that fails or dies is dropped with a
warning and the parent decodes its batches, so a broken worker costs time, never predictions.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Decoded = Any  # what ``veripo.eval.runner._decode_batch`` returns for one batch


class DecodeWorkers:
    """``n`` spawned processes holding a copy of the model in ``model_dir`` (a local transformers directory).

    Use ``begin(model, encode)`` before each evaluation (sends the weights and the encoder), then ``decode``.
    ``close()`` stops them (also a context manager); they are daemons, so they also end with the parent, and a
    worker whose parent was killed ends when its pipe closes.
    """

    def __init__(self, n: int, model_dir: str | Path, *, dtype: str = "float32", batch_size: int = 8,
                 threads: int = 1, attn_implementation: str | None = None) -> None:
        if n < 1:
            raise ValueError(f"DecodeWorkers: n must be >= 1, got {n}")
        context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        for index in range(n):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, name=f"veripo-decode-worker-{index}", daemon=True,
                                      args=(child, str(model_dir), dtype, batch_size, threads, attn_implementation))
            process.start()
            child.close()
            self._workers.append(_Worker(index, process, parent))
        self._encoder_sent: dict[int, int] = {}  # worker index -> id() of the encoder it holds
        self._weights_sent: dict[int, Any] = {}  # worker index -> the weights' version it holds (tower_version)
        self.batches_decoded = 0  # by the workers, over every evaluation

    @property
    def alive(self) -> int:
        return sum(w.alive for w in self._workers)

    def begin(self, model: Any, encode: Callable[..., Any]) -> None:
        """Hand every live worker the model's current weights and ``encode``, each unless it already has them
        (several benchmarks evaluated after one stage send the weights once)."""
        import torch

        from veripo.models.vision_cache import tower_version

        version = tower_version(model)  # changes with any in-place update of a parameter (optimizer step, load)
        stale = [w for w in self._live() if self._weights_sent.get(w.index) != version
                 or self._encoder_sent.get(w.index) != id(encode)]
        if not stale:
            return
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        encoder: bytes | None = None
        if any(self._encoder_sent.get(w.index) != id(encode) for w in stale):
            try:
                encoder = pickle.dumps(encode)
            except (pickle.PicklingError, TypeError, AttributeError) as e:  # e.g. a lambda
                for worker in self._live():
                    worker._drop(f"the encoder cannot be sent to it ({type(e).__name__}: {e})")
                return
        for worker in stale:
            fresh = self._encoder_sent.get(worker.index) != id(encode)
            if worker.call("begin", (weights, encoder if fresh else None)) is not _FAILED:
                self._encoder_sent[worker.index] = id(encode)
                self._weights_sent[worker.index] = version

    def decode(self, batches: Sequence[Sequence[Any]], decode_here: Callable[[Sequence[Any]], Decoded],
               params: Any, benchmark: str) -> list[Decoded]:
        """Decode ``batches`` (at most ``1 + alive`` of them): the first here, the others on one worker each,
        in parallel; the results in the batches' order. A worker's failure: its batch is decoded here."""
        workers = self._live()[: max(len(batches) - 1, 0)]
        sent = [w for w, batch in zip(workers, batches[1:]) if w.send("decode", (list(batch), params, benchmark))]
        results: list[Decoded] = [decode_here(batches[0])] if batches else []
        for worker, batch in zip(workers, batches[1:]):
            result = worker.receive() if worker in sent else _FAILED
            self.batches_decoded += result is not _FAILED
            results.append(decode_here(batch) if result is _FAILED else result)
        return results

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> DecodeWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if w.alive]


_FAILED = object()


class _Worker:
    """The parent's end of one worker: send a request, receive its answer, drop the worker on any failure."""

    def __init__(self, index: int, process: Any, conn: Any) -> None:
        self.index, self.process, self.conn, self.alive = index, process, conn, True

    def call(self, kind: str, payload: Any) -> Any:
        return self.receive() if self.send(kind, payload) else _FAILED

    def send(self, kind: str, payload: Any) -> bool:
        try:
            self.conn.send((kind, payload))
            return True
        except (OSError, ValueError, pickle.PicklingError) as e:
            self._drop(f"could not send it work ({type(e).__name__}: {e})")
            return False

    def receive(self) -> Any:
        try:
            status, value = self.conn.recv()
        except (OSError, EOFError) as e:
            self._drop(f"it stopped (exit code {self.process.exitcode}; {type(e).__name__})")
            return _FAILED
        if status != "ok":
            self._drop(f"it failed: {value}")
            return _FAILED
        return value

    def stop(self) -> None:
        if self.alive:
            try:
                self.conn.send(("stop", None))
            except (OSError, ValueError):
                pass
        self.alive = False
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()

    def _drop(self, why: str) -> None:
        log.warning("decode worker %d dropped, %s; this process decodes its share", self.index, why)
        self.alive = False
        if self.process.is_alive():
            self.process.kill()


def _serve(conn: Any, model_dir: str, dtype: str, batch_size: int, threads: int,
           attn_implementation: str | None) -> None:
    """A worker's loop: load the model once, then answer ``begin`` / ``decode`` until ``stop`` or a closed pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    import torch
    import transformers

    from veripo.eval.runner import _decode_batch
    from veripo.models.loading import load_policy
    from veripo.rollout.hf_engine import HFRolloutEngine

    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    policy = load_policy(model_dir, dtype=dtype, device="cpu", attn_implementation=attn_implementation)
    engine = HFRolloutEngine(policy.model, policy.tokenizer, max_batch_questions=batch_size)
    encode: Any = None
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if kind == "stop":
            return
        try:
            if kind == "begin":
                weights, encoder = payload
                policy.model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
                if encoder is not None:
                    encode = pickle.loads(encoder)  # noqa: S301 - our own parent's encoder, over a private pipe
                answer: Any = None
            elif kind == "decode":
                batch, params, benchmark = payload
                answer = _decode_batch(batch, encode, engine, params, benchmark)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decodes the batch itself
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("ok", answer))
