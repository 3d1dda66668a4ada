"""A run's questions: data sources loaded once (synthetic ones generated on first use), mixed per stage by
weight, and encoded into model inputs once per sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from veripo.config import ConfigError, DataSource, RunConfig
from veripo.data.curriculum import mix_sources
from veripo.data.loaders import LoadResult, load_samples
from veripo.data.jsonl import header_line
from veripo.data.loaders import DATASET_FILE, DataError
from veripo.data.records import Sample
from veripo.errors import UnusableSample
from veripo.recipes.run_dir import RunDir, atomic_write_text
from veripo.rewards import gold_problem

def source_names(files: Sequence[Path]) -> dict[Path, str]:
    """The name each data file's sample ids start with (``<name>:<record id>``): the file's stem (a dataset
    folder's name for its ``dataset.json``), as ``load_samples`` names it, unless two different files of the
    run share that name (``a/train.json``, ``b/train.json``): then each of them is named by its path with as
    many parent folders as tell them apart (``a/train``, ``b/train``), so their ids cannot collide."""
    def parts(file: Path) -> list[str]:
        named = file.parent if file.name == DATASET_FILE else file.with_suffix("")
        return [p for p in named.parts if p != named.anchor]

    by_name: dict[str, list[Path]] = {}
    for file in dict.fromkeys(files):
        by_name.setdefault(parts(file)[-1], []).append(file)
    names = {}
    for name, group in by_name.items():
        if len(group) == 1:
            names[group[0]] = name
            continue
        for depth in range(2, max(len(parts(f)) for f in group) + 1):
            if len({"/".join(parts(f)[-depth:]) for f in group}) == len(group):
                names.update({f: "/".join(parts(f)[-depth:]) for f in group})
                break
        else:  # the same path but for the suffix (train.json, train.jsonl): the whole path names them
            names.update({f: str(f) for f in group})
    return names


SKIPPED_FILE = "skipped.jsonl"  # a training stage's unusable questions: {"sample_id", "reason"} per line


def drop_unusable(samples: Sequence[Sample], encode: Callable[[Sample], Any], *, stage: str, max_share: float,
                  log: Callable[[str], None], record: Path | None = None) -> list[Sample]:
    """The samples ``encode`` can turn into a prompt. Each one it cannot (``UnusableSample``: unreadable
    media, a prompt over the token limit) is logged with its reason, listed in ``record`` (a JSONL file) and
    dropped; more than ``max_share`` of them (the config's ``max_bad_share``) is a DataError: a stage
    training on what is left would quietly be a different experiment.

    Every question is encoded before the first step (the encoder memoises, and the decoded frames are
    cached on disk), so the stage's batches are drawn from a list that a resumed run rebuilds identically."""
    kept, bad = [], []
    for sample in samples:
        try:
            encode(sample)
        except UnusableSample as e:
            bad.append({"sample_id": sample.id, "reason": str(e)})
        else:
            kept.append(sample)
    if record is not None and (bad or record.exists()):
        rows = [header_line(None), *bad]
        atomic_write_text(record, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    for row in bad[:20]:
        log(f"skipped question {row['sample_id']}: {row['reason']}")
    if len(bad) > 20:
        log(f"... and {len(bad) - 20} more skipped questions (all in {record})")
    check_bad_share(len(bad), len(samples), max_share, stage, (bad[0]["sample_id"], bad[0]["reason"]) if bad else None,
                    record)
    if bad:
        log(f"{len(bad)} of {len(samples)} questions skipped as unusable (max_bad_share {max_share:g})")
    return kept


def check_bad_share(bad: int, total: int, max_share: float, stage: str, first: tuple[str, str] | None,
                    record: Path | None) -> None:
    """DataError when more than ``max_share`` of a stage's ``total`` questions cannot be used: a stage training
    on what is left would quietly be a different experiment."""
    if total and bad > max_share * total:
        where = f" (list in {record})" if record is not None else ""
        raise DataError(f"stage '{stage}': {bad} of {total} questions cannot be used (first: {first[0]}: {first[1]}), "
                        f"more than max_bad_share {max_share:g}; fix the data or raise max_bad_share{where}")


class SampleStore:
    def __init__(self, cfg: RunConfig, run_dir: RunDir, console: Console) -> None:
        self.cfg, self.run_dir, self.console = cfg, run_dir, console
        self._loaded: dict[tuple[Any, ...], LoadResult] = {}
        self._by_id: dict[str, Sample] = {}
        self._origin: dict[str, Path] = {}  # sample id -> the file it came from
        sources = (*cfg.data, *cfg.eval.heldout, *(d for s in (*cfg.stages, *cfg.loop) for d in s.data))
        self._names = source_names([self.dataset_file(s) for s in sources])

    def source_path(self, source: DataSource) -> Path:
        path = Path(source.path)
        if source.synthetic and not path.is_absolute():
            path = self.run_dir.root / "data" / path  # generated data lives with the run
        return path

    def dataset_file(self, source: DataSource) -> Path:
        """The file a source's samples are read from (a dataset folder's ``dataset.json``), absolute."""
        path = self.source_path(source).resolve()
        return path / DATASET_FILE if source.synthetic or path.is_dir() else path

    def generate(self, source: DataSource) -> None:
        """Write a synthetic source's dataset folder if it is not there yet (the run's rank 0 does this for
        every source before any stage, so ranks never write the same files at once)."""
        path = self.source_path(source)
        if not source.synthetic or (path / "dataset.json").exists():
            return
        from veripo.data.synthetic import make_synthetic

        self.console.print(f"generating synthetic data {path} {source.synthetic}")
        kwargs = dict(source.synthetic)
        if "frames" in kwargs:
            kwargs["frames"] = tuple(kwargs["frames"])
        make_synthetic(path, **kwargs)

    def load(self, source: DataSource) -> LoadResult:
        path = self.source_path(source)
        key = (str(path), source.media_root, source.format, source.on_error, source.limit,
               tuple(sorted(source.columns.items())), source.split, source.streaming)
        if key in self._loaded:
            return self._loaded[key]
        self.generate(source)
        result = load_samples(path, media_root=source.media_root, format=source.format, on_error=source.on_error,
                              limit=source.limit, source=self._names.get(self.dataset_file(source)),
                              check=gold_problem, columns=source.columns, split=source.split,
                              streaming=source.streaming)
        if result.skipped:
            self.console.print(result.summary())
        self._loaded[key] = result
        file = self.dataset_file(source)
        for s in result.samples:
            if self._by_id.setdefault(s.id, s) is not s and self._origin[s.id] != file:
                # two sources whose records carry their own ids (JSONL Sample dicts) can repeat one: the run
                # would answer one question with the other's gold answer
                raise DataError(f"{file}: sample id {s.id!r} is also the id of a sample in {self._origin[s.id]}; "
                                "sample ids must be unique across a run's data sources")
            self._origin.setdefault(s.id, file)
        return result

    def load_all(self, sources: Sequence[DataSource]) -> list[Sample]:
        """A stage's questions: every source once, mixed by weight (seeded); one source is kept in order."""
        if not sources:
            raise ConfigError("no data: set `data` in the config or `data` on the stage")
        results = {(s.name or s.path): (self.load(s), s.weight) for s in sources}
        if len(results) == 1:
            return list(next(iter(results.values()))[0].samples)
        return mix_sources(results, seed=self.cfg.seed)

    def all_samples(self) -> list[Sample]:
        """Every sample loaded so far (verify and DPO stages look up the questions of earlier rollouts)."""
        return list(self._by_id.values())

    def encoder(self, policy: Any) -> Callable[[Sample], dict[str, Any]]:
        """``sample -> model inputs`` with the run's media settings and prompt, memoised per sample id."""
        from veripo.models.inputs import SampleEncoder

        return SampleEncoder(policy.processor, self.cfg.media, style=self.cfg.model.prompt,
                             max_prompt_tokens=self.cfg.model.max_prompt_tokens,
                             cache_dir=self.cfg.media.cache_dir or str(self.run_dir.root / "media-cache"))
