"""Dataset loaders: one entry point, :func:`load_samples`, that detects the format and returns Samples.

Formats (``format=``):
- ``videor1``: Video-R1 training JSON (``problem``, ``problem_type``, ``options``, ``solution`` as
  ``<answer>X</answer>``, media as ``path`` or as ``video``/``image`` lists, optional ``process`` with a
  ``<think>`` chain). Our synthetic dataset folders use it too.
- ``videor1-eval``: Video-R1 evaluation JSON (the same plus ``problem_id``, ``data_source``).
- ``veripo-eval``: VerIPO evaluation JSON (``question_id, question, video_path, answer,
  processed_question``; options are parsed from ``processed_question``).
- ``jsonl``: one Sample dict per line (as written by :class:`veripo.data.jsonl.JsonlWriter`).
- ``hf``: a Hugging Face dataset (parquet or Arrow files, a dataset folder, ``hf:owner/name``), read through
  the ``datasets`` library (``veripo.data.hf_datasets``); its ``columns`` mapping renames dataset columns to
  the fields of one of the formats above, which is then detected from the renamed record.
A folder means a synthetic dataset folder (its ``dataset.json``). Bad records are skipped (or raise, with
``on_error="fail"``) and listed in ``LoadResult.skipped``; nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from veripo.data import hf_datasets
from veripo.data.jsonl import HEADER_KEY, iter_jsonl_lines
from veripo.data.records import PROBLEM_TYPES, RecordFieldError, Sample
from veripo.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("auto", "videor1", "videor1-eval", "veripo-eval", "jsonl", "hf")
DATASET_FILE = "dataset.json"  # the JSON inside a synthetic dataset folder
_TYPE_ALIASES = {"multiple-choice": "multiple choice", "multiple_choice": "multiple choice", "mc": "multiple choice",
                 "free form": "free-form", "free_form": "free-form", "open-ended": "free-form", "ocr": "OCR",
                 "numeric": "numerical", "number": "numerical"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.+?)\s*$")
_TAG = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.DOTALL) for name in ("answer", "think")}


class DataError(UserError, ValueError):
    """A data file or record that cannot be used: the message names file, record, field and what was expected."""


@dataclass
class SkippedRecord:
    file: str
    index: int  # record position (0-based) in a JSON list, or line number (1-based) in a JSONL file
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} record {self.index}: field '{self.field}': {self.reason}"


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    missing_media: list[SkippedRecord] = field(default_factory=list)  # also in skipped when media is required
    source: str = ""
    format: str = ""

    def summary(self) -> str:
        """A short multi-line report: counts by type, skipped records with their reasons."""
        by_type = Counter(s.problem_type for s in self.samples)
        by_data = Counter(s.data_type for s in self.samples)
        lines = [f"{self.source} ({self.format}): {len(self.samples)} samples loaded, {len(self.skipped)} skipped",
                 "  problem types: " + ", ".join(f"{k}={v}" for k, v in sorted(by_type.items())),
                 "  data types: " + ", ".join(f"{k}={v}" for k, v in sorted(by_data.items()))]
        if self.missing_media:
            lines.append(f"  missing media: {len(self.missing_media)}")
        lines += [f"  skipped: {s}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more skipped")
        return "\n".join(lines)


class _Skip(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field_name, reason


# ------------------------------------------------------------------------------------------ media paths


def resolve_media(path: str, media_root: Path) -> Path:
    """``path`` resolved under ``media_root``; raises DataError when it escapes the root.

    A published path often carries a prefix of the original machine (``./dataflow/example/x.mp4``): when the
    whole path does not exist under the root, its trailing parts are tried (``example/x.mp4``, ``x.mp4``).
    Returns the first candidate that exists, or the full path when none does (reported as missing later).
    """
    root = media_root.resolve()
    raw = Path(path)
    full = (raw if raw.is_absolute() else root / raw).resolve()
    if not full.is_relative_to(root):
        raise DataError(f"media path {path!r} escapes the media root {root}")
    if full.exists() or raw.is_absolute():
        return full
    parts = [p for p in raw.parts if p not in (".", "")]
    for i in range(1, len(parts)):
        candidate = (root.joinpath(*parts[i:])).resolve()
        if candidate.is_relative_to(root) and candidate.exists():
            return candidate
    return full


# ---------------------------------------------------------------------------------------- field parsing


def _strip_tag(text: str, tag: str) -> str:
    m = _TAG[tag].search(text)
    return (m.group(1) if m else text).strip()


def _problem_type(value: Any, options: list[str]) -> str:
    if value is None:
        return "multiple choice" if options else "free-form"
    if not isinstance(value, str):
        raise _Skip("problem_type", f"expected a string, got {type(value).__name__}")
    name = value.strip()
    name = _TYPE_ALIASES.get(name.lower(), name)
    if name not in PROBLEM_TYPES:
        raise _Skip("problem_type", f"unknown problem type {value!r}; expected one of {', '.join(PROBLEM_TYPES)}")
    return name


def _text(row: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise _Skip(key, "missing")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _Skip(key, f"expected text, got {type(value).__name__}")
    return value


def _options(row: dict[str, Any], key: str = "options") -> list[str]:
    value = row.get(key) or []
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise _Skip(key, "expected a list of option strings like 'A. red'")
    return list(value)


def parse_options(text: str) -> tuple[str, list[str]]:
    """Split a VerIPO ``processed_question`` into (question, ["A. ...", "B. ..."])."""
    question_lines, options = [], []
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m and (not options and m.group(1) == "A" or options and ord(m.group(1)) == ord(options[-1][0]) + 1):
            options.append(f"{m.group(1)}. {m.group(2)}")
        elif not options:
            question_lines.append(line)
    return "\n".join(question_lines).strip(), options


def _media_list(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _Skip(key, "expected a path or a list of paths")


# ------------------------------------------------------------------------------------- record builders


def _from_videor1(row: dict[str, Any], index: int, source: str) -> Sample:
    options = _options(row)
    solution = _text(row, "solution")
    video, images = _media_list(row, "video"), _media_list(row, "image")
    data_type = row.get("data_type")
    if (path := row.get("path")) is not None:
        if not isinstance(path, str):
            raise _Skip("path", "expected a path string")
        is_image = data_type == "image" or (data_type is None and Path(path).suffix.lower() in _IMAGE_SUFFIXES)
        (images if is_image else video).append(path)
    if len(video) > 1:
        raise _Skip("video", f"expected one video, got {len(video)}")
    if data_type is None:
        data_type = "video" if video else "image" if images else "text"
    if data_type not in ("text", "image", "video"):
        raise _Skip("data_type", f"unknown data type {data_type!r}; expected text, image or video")
    reasoning = row.get("process") or row.get("reasoning") or None
    ident = row.get("problem_id", row.get("id"))
    extra = {k: row[k] for k in ("data_source", "task", "original_question_type") if k in row}
    difficulty = row.get("difficulty")
    return Sample(id=f"{source}:{ident if ident is not None else index}", problem=_text(row, "problem"),
                  problem_type=_problem_type(row.get("problem_type"), options), answer=_strip_tag(solution, "answer"),
                  options=options, images=images, video=video[0] if video else None, data_type=data_type,
                  source=source, difficulty=difficulty if isinstance(difficulty, int) else None,
                  reasoning=_strip_tag(reasoning, "think") if isinstance(reasoning, str) else None, extra=extra)


def _from_veripo_eval(row: dict[str, Any], index: int, source: str) -> Sample:
    processed = _text(row, "processed_question", required=False)
    question, options = parse_options(processed) if processed else (_text(row, "question"), [])
    answer = _text(row, "answer").strip()
    video = _text(row, "video_path", required=False) or None
    # LVBench's `question` already lists its options ("(A) ..."): keep them in `options` only, so a prompt
    # that prints the problem and then the options shows them once
    problem, listed = parse_options(_text(row, "question"))
    return Sample(id=f"{source}:{row.get('question_id', index)}",
                  problem=(problem if options and listed else _text(row, "question")) or question,
                  problem_type=_problem_type(row.get("problem_type"), options), answer=answer, options=options,
                  video=video, data_type="video" if video else "text", source=source,
                  extra={"processed_question": processed} if processed else {})


def _from_sample_dict(row: dict[str, Any], index: int, source: str) -> Sample:
    row = {**row, **{key: _text(row, key) for key in ("id", "problem", "answer")}}  # a number is read as text
    try:
        sample = Sample.from_dict(row)
    except RecordFieldError as e:
        raise _Skip(e.field, e.reason) from None
    sample.problem_type = _problem_type(row.get("problem_type"), sample.options)
    if sample.data_type not in ("text", "image", "video"):
        raise _Skip("data_type", f"unknown data type {sample.data_type!r}; expected text, image or video")
    sample.source = sample.source or source
    return sample


_BUILDERS = {"videor1": _from_videor1, "videor1-eval": _from_videor1, "veripo-eval": _from_veripo_eval,
             "jsonl": _from_sample_dict}


def detect_format(path: Path, first_row: dict[str, Any] | None) -> str:
    """The format of a file from its extension and the keys of its first record."""
    if path.suffix == ".jsonl":
        return "jsonl"
    keys = set(first_row or {})
    if "question_id" in keys or "processed_question" in keys:
        return "veripo-eval"
    if "problem_id" in keys and "path" in keys:
        return "videor1-eval"
    if "problem" in keys and "solution" in keys:
        return "videor1"
    if {"id", "problem", "answer"} <= keys:
        return "jsonl"  # Sample dicts in a JSON list
    raise DataError(f"{path}: cannot tell the format from the first record's keys {sorted(keys)}; "
                    f"pass format= one of {', '.join(_BUILDERS)}")


# ----------------------------------------------------------------------------------------- file reading


def _read_json_rows(path: Path) -> list[tuple[int, Any]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start}); re-encode the file as UTF-8") from None
    try:
        rows = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if isinstance(rows, dict):  # {"data": [...]} style wrappers
        lists = [v for v in rows.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of records (or an object holding one list)")
        rows = lists[0]
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    return list(enumerate(rows))


def _read_jsonl_rows(path: Path, skip: Any) -> list[tuple[int, Any]]:
    rows = []
    for lineno, obj, error, torn in iter_jsonl_lines(path):
        if error is not None:
            skip(lineno, "<line>", f"torn last line ({error})" if torn else error)
        elif HEADER_KEY not in obj:  # type: ignore[operator]
            rows.append((lineno, obj))
    return rows


def load_samples(path: str | os.PathLike[str], *, media_root: str | os.PathLike[str] | None = None,
                 format: str = "auto", on_error: Literal["skip", "fail"] = "skip", limit: int | None = None,
                 require_media: bool = True, source: str | None = None,
                 check: Callable[[Sample], tuple[str, str] | None] | None = None,
                 columns: Mapping[str, str] | None = None, split: str = "train", streaming: bool = False) -> LoadResult:
    """Load the samples of a dataset file, a synthetic dataset folder or a Hugging Face dataset.

    Args:
        path: a JSON / JSONL file, or a folder holding ``dataset.json``; or a Hugging Face dataset
            (``veripo.data.hf_datasets``): parquet or Arrow files, a ``save_to_disk`` folder, a dataset folder
            of data files, or ``hf:owner/name`` on the Hub.
        media_root: media paths resolve under it (default: the file's folder); paths escaping it are errors.
        format: one of FORMATS; ``auto`` detects it from the extension and the first record's keys.
        on_error: ``skip`` lists bad records in ``LoadResult.skipped``; ``fail`` raises DataError on the first.
        limit: stop after this many samples (a streamed dataset reads no further).
        require_media: a record whose media file is missing is skipped (True) or kept and only listed in
            ``missing_media`` (False: question files whose videos are not here, e.g. for scoring tests).
        source: the name used in sample ids (default: the file name without extension).
        check: ``sample -> (field, reason)`` for a sample that cannot be used (e.g. a gold answer no reward can
            match: ``veripo.rewards.gold_problem``), else None; such records are skipped like malformed ones.
        columns: Hugging Face datasets only: ``{veripo field: dataset column}`` renames before the record is read.
        split, streaming: Hugging Face datasets only: the split, and whether rows are read lazily.
    Returns: LoadResult(samples, skipped, missing_media); ``summary()`` prints a report.
    """
    if format not in FORMATS:
        raise DataError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if on_error not in ("skip", "fail"):
        raise DataError(f"on_error {on_error!r}: expected 'skip' or 'fail'")
    if format == "hf" or hf_datasets.is_hf_source(path):
        rows = hf_datasets.HfRows(path, columns or {}, split=split, streaming=streaming)
        record_format = "auto" if format == "hf" else format  # the renamed records' format
        return _samples_from_rows(rows, rows.label, rows.media_root(media_root), source or rows.name,
                                  record_format, on_error, limit, require_media, check)
    if columns:
        raise DataError(f"{path}: columns are a Hugging Face dataset setting (parquet, Arrow, a dataset folder "
                        "or hf:NAME); a JSON or JSONL file uses veripo's field names")
    path = Path(path)
    if path.is_dir():
        folder = path
        path = folder / DATASET_FILE
        if not path.is_file():
            raise DataError(f"{folder}: a dataset folder must hold {DATASET_FILE}")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    root = Path(media_root) if media_root is not None else path.parent
    name = source or (path.parent.name if path.name == DATASET_FILE else path.stem)
    if format == "auto" and path.name == DATASET_FILE:
        format = "videor1"  # a synthetic dataset folder
    return _samples_from_rows(path, str(path), root, name, format, on_error, limit, require_media, check)


def _samples_from_rows(rows_of: Any, label: str, root: Path, name: str, format: str, on_error: str,
                       limit: int | None, require_media: bool,
                       check: Callable[[Sample], tuple[str, str] | None] | None = None) -> LoadResult:
    """Build the samples of one source's records (``rows_of``: a JSON/JSONL path, or an iterable of
    ``(index, record)``), skipping or failing on bad ones; ``label`` names the source in messages."""
    result = LoadResult(source=name)

    def skip(index: int, field_name: str, reason: str) -> None:
        record = SkippedRecord(label, index, field_name, reason)
        if on_error == "fail":
            raise DataError(str(record))
        result.skipped.append(record)

    if isinstance(rows_of, Path):
        rows: Iterable[tuple[int, Any]] = _read_jsonl_rows(rows_of, skip) if rows_of.suffix == ".jsonl" \
            else _read_json_rows(rows_of)
        first = next((r for _, r in rows if isinstance(r, dict)), None)
        path = rows_of
    else:
        rows, first, path = rows_of, rows_of.first(), Path(label)
    try:
        result.format = fmt = detect_format(path, first) if format == "auto" else format
        _build_samples(rows, _BUILDERS[fmt], label, name, root, limit, require_media, result, skip, check)
    finally:
        close = getattr(rows, "close", None)  # a streamed dataset's open files
        if close is not None:
            close()
    log.info(result.summary())
    return result


def _build_samples(rows: Iterable[tuple[int, Any]], build: Any, label: str, name: str, root: Path,
                   limit: int | None, require_media: bool, result: LoadResult, skip: Any,
                   check: Callable[[Sample], tuple[str, str] | None] | None = None) -> None:
    """Append the usable records of ``rows`` to ``result.samples``; ``skip(index, field, reason)`` the others."""
    indices: list[int] = []  # each loaded sample's record
    for index, row in rows:
        if limit is not None and len(result.samples) >= limit:
            break
        if not isinstance(row, dict):
            skip(index, "<record>", f"expected a JSON object, got {type(row).__name__}")
            continue
        try:
            sample = build(row, index, name)
            if sample.data_type == "video" and not sample.video or sample.data_type == "image" and not sample.images:
                raise _Skip("path", f"data_type is {sample.data_type!r} but the record names no {sample.data_type} file")
            _resolve_sample_media(sample, root)
            if check is not None and (problem := check(sample)) is not None:
                raise _Skip(*problem)
        except _Skip as e:
            skip(index, e.field, e.reason)
            continue
        missing = [p for p in ([sample.video] if sample.video else []) + sample.images if not Path(p).exists()]
        if missing:
            record = SkippedRecord(label, index, "video" if sample.video in missing else "images",
                                   f"media file not found: {missing[0]}")
            result.missing_media.append(record)
            if require_media:
                skip(index, record.field, record.reason)
                continue
        result.samples.append(sample)
        indices.append(index)
    _unique_ids(result.samples, indices, label)


def _unique_ids(samples: list[Sample], indices: list[int], path: Path | str) -> None:
    """Give the 2nd, 3rd... record of a repeated id the id ``<id>#2``, ``<id>#3``... (some published files
    reuse an id for different questions: TOMATO has 62); DataError when such a name is itself a record's id
    in the file, since the two questions could then not be told apart."""
    first: dict[str, int] = {}
    for sample, index in zip(samples, indices):
        first.setdefault(sample.id, index)
    seen: Counter[str] = Counter()
    for sample, index in zip(samples, indices):
        seen[sample.id] += 1
        if seen[sample.id] == 1:
            continue
        renamed = f"{sample.id}#{seen[sample.id]}"
        if renamed in first:
            raise DataError(f"{path} record {index}: field 'id': {sample.id!r} repeats record {first[sample.id]} "
                            f"and its numbered name {renamed!r} is the id of record {first[renamed]}; give the "
                            "records unique ids")
        sample.extra["original_id"] = sample.id
        sample.id = renamed


def _resolve_sample_media(sample: Sample, root: Path) -> None:
    try:
        if sample.video:
            sample.video = str(resolve_media(sample.video, root))
        sample.images = [str(resolve_media(p, root)) for p in sample.images]
    except DataError as e:
        raise _Skip("video" if sample.video else "images", str(e)) from None
