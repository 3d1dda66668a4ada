"""Hugging Face ``datasets`` as a data source: parquet or Arrow files, a ``save_to_disk`` folder, a dataset
folder of data files, or a Hub dataset (``hf:owner/name``, when the user has access), read through the
``datasets`` library (``pip install 'veripo[datasets]'``).

A source's ``columns`` maps veripo's field names to the dataset's columns (``{problem: question, solution:
label, video: clip_path}``); the renamed record is then read by the same record builders as a JSON file
(``veripo.data.loaders``), so a Video-R1-style or Sample-style dataset needs no mapping at all. A column
that was renamed is not also kept under its own name.

``streaming: true`` reads rows lazily (``IterableDataset``): nothing is converted into Arrow cache files, and a
source's ``limit`` stops reading once it has enough samples, so the head of a very large set costs only the
rows read. Without streaming, ``datasets`` converts the files once into its memory-mapped Arrow cache.
Media columns must hold paths (resolved under ``media_root``); embedded image or video bytes are skipped
and counted like any other bad record.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from veripo.data.records import Sample

HUB_PREFIX = "hf:"
DATASETS_EXTRA = "pip install 'veripo[datasets]'"
FILE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json")  # what save_to_disk writes
# the fields a column may be renamed to: a Sample's, and those of the Video-R1 and VerIPO-eval records
FIELDS = frozenset({f.name for f in dataclasses.fields(Sample)} | {
    "problem_id", "solution", "path", "image", "process", "data_source", "task", "original_question_type",
    "question_id", "question", "video_path", "processed_question"})


def is_hf_source(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a dataset the ``datasets`` library reads (rather than a JSON/JSONL file or a
    synthetic dataset folder)."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return True
    p = Path(text)
    if p.suffix in FILE_SUFFIXES:
        return True
    if p.is_dir() and not (p / "dataset.json").exists():
        return any((p / m).exists() for m in SAVED_MARKERS) or any(
            f.suffix in FILE_SUFFIXES for f in p.rglob("*") if f.is_file())
    return False


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"Hugging Face dataset sources need the datasets package: {DATASETS_EXTRA}") from None
    return datasets


class HfRows:
    """The records of one dataset as ``(row index, renamed record)``, read lazily when ``streaming``.

    Raises ``DataError`` (naming the dataset and the setting) when the dataset cannot be opened, the split
    does not exist, or ``columns`` names an unknown field or a column the dataset lacks."""

    def __init__(self, path: str | os.PathLike[str], columns: Mapping[str, str], *, split: str = "train",
                 streaming: bool = False, cache_dir: str | None = None) -> None:
        from veripo.data.loaders import DataError

        self.label = str(path)
        hub = self.label.startswith(HUB_PREFIX)
        self.name = self.label[len(HUB_PREFIX):].replace("/", "-") if hub else Path(self.label).stem
        unknown = sorted(set(columns) - FIELDS)
        if unknown:
            raise DataError(f"{self.label}: columns: {unknown} are not veripo fields; expected some of "
                            f"{sorted(FIELDS)}")
        self.columns = dict(columns)
        self.read = 0  # rows taken from the dataset so far
        try:
            self.dataset = self._open(split, streaming, cache_dir)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise DataError(f"{self.label}: cannot open it as a Hugging Face dataset (split {split!r}): {e}") from None
        self._rows = iter(self.dataset)
        self._peeked: list[dict[str, Any]] = []
        known = getattr(self.dataset, "column_names", None) or list(self.first() or {})
        missing = {field: column for field, column in self.columns.items() if column not in known}
        if missing:
            field, column = next(iter(missing.items()))
            raise DataError(f"{self.label}: columns.{field}: no column {column!r} in the dataset (its columns: "
                            f"{sorted(known)})")

    def _open(self, split: str, streaming: bool, cache_dir: str | None) -> Any:
        datasets = _datasets()
        if self.label.startswith(HUB_PREFIX):
            return datasets.load_dataset(self.label[len(HUB_PREFIX):], split=split, streaming=streaming,
                                         cache_dir=cache_dir)
        path = Path(self.label)
        if path.is_dir() and any((path / m).exists() for m in SAVED_MARKERS):
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise ValueError(f"no split {split!r}; the folder holds {sorted(saved)}")
                saved = saved[split]
            return saved.to_iterable_dataset() if streaming else saved
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split, streaming=streaming, cache_dir=cache_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        return datasets.load_dataset(FILE_SUFFIXES[path.suffix], data_files=str(path), split=split,
                                     streaming=streaming, cache_dir=cache_dir)

    def media_root(self, given: str | os.PathLike[str] | None) -> Path:
        """Where media paths resolve: ``given``, else the file's folder, the dataset folder, or the cwd (Hub)."""
        if given is not None:
            return Path(given)
        if self.label.startswith(HUB_PREFIX):
            return Path.cwd()
        path = Path(self.label)
        return path if path.is_dir() else path.parent

    def _next_raw(self) -> dict[str, Any] | None:
        if self._peeked:
            return self._peeked.pop()
        row = next(self._rows, None)
        if row is not None:
            self.read += 1
        return row

    def first(self) -> dict[str, Any] | None:
        """The first record, renamed (not consumed)."""
        if not self._peeked:
            row = self._next_raw()
            if row is None:
                return None
            self._peeked.append(row)
        return self.rename(self._peeked[0])

    def rename(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """``row`` with its mapped columns under veripo's field names (mapped columns dropped otherwise)."""
        renamed = {k: v for k, v in row.items() if k not in self.columns.values()}
        renamed.update({field: row.get(column) for field, column in self.columns.items()})
        return renamed

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for index in itertools.count():
            row = self._next_raw()
            if row is None:
                return
            yield index, self.rename(row)

    def close(self) -> None:
        """Stop a streamed read (closes the library's file generators now, not at interpreter exit)."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()
        self._rows = iter(())
