"""Append-only, crash-safe JSONL files of records (samples, rollouts, verdicts, pairs, metrics rows).

Layout: the first line is a header ``{"_veripo": "jsonl", "kind": ..., "schema_version": N}``; every other
line is one record as a JSON object. Each record line is handed to the OS in one ``os.write`` call, so a
killed process leaves either the whole line or (at worst) a torn last line; ``fsync`` (per record, per
batch or never) decides what survives a power loss. Readers tolerate a torn last line and report it
(a warning and a count); a malformed line in the middle is an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from veripo.data.records import RECORD_TYPES, SCHEMA_VERSION, Record
from veripo.errors import UserError

log = logging.getLogger(__name__)

HEADER_KEY = "_veripo"
FsyncPolicy = Literal["record", "batch", "none"]


class JsonlError(UserError, ValueError):
    """A JSONL file that cannot be read: the message names the file and line."""


class TornLineWarning(UserWarning):
    """The last line of a JSONL file was cut short (a writer was killed mid-record); it was ignored."""


def header_line(kind: str | None) -> dict[str, Any]:
    return {HEADER_KEY: "jsonl", "kind": kind, "schema_version": SCHEMA_VERSION}


def _repair_torn_tail(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path`` so appends start on a fresh line.

    Returns the number of bytes removed. The torn bytes were a record that was never completely written.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline in blocks; a torn record is at most one line long.
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    removed = size - keep
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted writer", path, removed)
    return removed


class JsonlWriter:
    """Append records to a JSONL file; use as a context manager.

    Args:
        path: the file; created with a header line when new or empty, appended to otherwise (a torn last
            line from an earlier crash is cut off first).
        kind: the record kind for the header (``"rollout"``...); taken from the first Record written
            when omitted.
        fsync: ``"record"`` fsyncs after every record, ``"batch"`` every ``batch_size`` records and on
            close, ``"none"`` never (a process kill still loses nothing already written).
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str | None = None, fsync: FsyncPolicy = "record",
                 batch_size: int = 64) -> None:
        if fsync not in ("record", "batch", "none"):
            raise ValueError(f"fsync must be 'record', 'batch' or 'none', got {fsync!r}")
        self.path = Path(path)
        self.kind = kind
        self.fsync = fsync
        self.batch_size = max(1, batch_size)
        self.written = 0
        self._unsynced = 0
        self._fd: int | None = None
        self._needs_header = False

    def __enter__(self) -> JsonlWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _repair_torn_tail(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._needs_header = os.fstat(self._fd).st_size == 0

    def write(self, record: Record | dict[str, Any]) -> None:
        """Append one record (a Record or a plain dict) as one line."""
        if self._fd is None:
            raise RuntimeError(f"JsonlWriter({self.path}) is not open; use it as a context manager")
        if isinstance(record, Record):
            self.kind = self.kind or record.kind
            data = record.to_dict()
        else:
            data = dict(record)
        payload = b""
        if self._needs_header:
            payload += _dumps(header_line(self.kind))
            self._needs_header = False
        payload += _dumps(data)
        _write_all(self._fd, payload)
        self.written += 1
        self._unsynced += 1
        if self.fsync == "record" or (self.fsync == "batch" and self._unsynced >= self.batch_size):
            self.sync()

    def write_many(self, records: list[Record | dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        if self._fd is None:
            return
        if self._needs_header:  # an empty file still says what it holds
            _write_all(self._fd, _dumps(header_line(self.kind)))
            self._unsynced += 1
        if self.fsync != "none":
            self.sync()
        os.close(self._fd)
        self._fd = None


def _dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _write_all(fd: int, payload: bytes) -> None:
    # One write call per record in practice; loop only for the rare short write (disk nearly full).
    view = memoryview(payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class JsonlScan:
    """What reading a JSONL file found."""

    path: Path
    records: list[Any] = field(default_factory=list)
    kind: str | None = None
    schema_version: int | None = None
    torn_lines: int = 0  # 0 or 1: a cut-short last line that was ignored


def iter_jsonl_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any] | None, str | None, bool]]:
    """Yield ``(line_number, object_or_None, error_or_None, is_last)`` for every non-blank line.

    Headers are yielded like any object; bad UTF-8 and bad JSON come back as an error message, so callers
    decide between skipping and failing.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    ends_with_newline = data.endswith(b"\n")
    if ends_with_newline:
        lines = lines[:-1]
    last_nonblank = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        is_last = i == last_nonblank
        try:
            text = raw.decode("utf-8-sig" if i == 0 else "utf-8")  # tolerate a BOM from Windows editors
        except UnicodeDecodeError as e:
            yield i + 1, None, f"not valid UTF-8 (byte {e.start} of the line)", is_last and not ends_with_newline
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield i + 1, None, f"invalid JSON: {e.msg} (column {e.colno})", is_last and not ends_with_newline
            continue
        except RecursionError:
            yield i + 1, None, "JSON nested too deeply to read", False
            continue
        if not isinstance(obj, dict):
            yield i + 1, None, f"expected a JSON object, got {type(obj).__name__}", False
            continue
        yield i + 1, obj, None, is_last and not ends_with_newline


def scan_jsonl(path: str | os.PathLike[str], record_type: type[Record] | str | None = None) -> JsonlScan:
    """Read a whole JSONL file; see :func:`read_jsonl`. Returns the records with what was found."""
    path = Path(path)
    scan = JsonlScan(path=path)
    rtype = RECORD_TYPES[record_type] if isinstance(record_type, str) else record_type
    for lineno, obj, error, torn_candidate in iter_jsonl_lines(path):
        if error is not None:
            if torn_candidate:
                scan.torn_lines += 1
                msg = f"{path}:{lineno}: ignored a torn last line ({error}); a writer was interrupted"
                log.warning(msg)
                warnings.warn(msg, TornLineWarning, stacklevel=3)
                continue
            raise JsonlError(f"{path}:{lineno}: {error}")
        assert obj is not None
        if HEADER_KEY in obj:
            version = obj.get("schema_version")
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise JsonlError(f"{path}:{lineno}: schema_version {version!r} is not supported "
                                 f"(this veripo reads <= {SCHEMA_VERSION})")
            scan.kind, scan.schema_version = obj.get("kind"), version
            continue
        if rtype is None:
            scan.records.append(obj)
            continue
        try:
            scan.records.append(rtype.from_dict(obj))
        except TypeError as e:
            raise JsonlError(f"{path}:{lineno}: not a {rtype.__name__} record: {e}") from None
    return scan


def read_jsonl(path: str | os.PathLike[str], record_type: type[Record] | str | None = None) -> list[Any]:
    """All records of a JSONL file: dicts, or ``record_type`` instances (a class or a kind like "rollout").

    The header line is checked (schema version) and not returned. A torn last line is skipped with a
    :class:`TornLineWarning` (use :func:`scan_jsonl` for the count); any other bad line raises
    :class:`JsonlError` naming the file and line.
    """
    return scan_jsonl(path, record_type).records



def check_unique_ids(records: list[Any], path: str | os.PathLike[str], attr: str = "id") -> None:
    """JsonlError naming the file, the id and both records when two records share an id (the second would
    silently replace the first wherever records are looked up by id)."""
    first: dict[Any, int] = {}
    for position, record in enumerate(records, 1):
        key = getattr(record, attr)
        if key in first:
            raise JsonlError(f"{path}: record {position}: field {attr!r}: {key!r} is also the {attr} of record "
                             f"{first[key]}; ids must be unique in a file")
        first[key] = position
