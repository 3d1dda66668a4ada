"""A run's questions: data sources loaded once (synthetic ones generated on first use), mixed per stage by
weight, and encoded into model inputs once per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from veripo.config import DataSource, RunConfig
from veripo.data.curriculum import mix_sources
from veripo.data.loaders import LoadResult, load_samples
from veripo.data.records import Sample
from veripo.recipes.run_dir import RunDir


class SampleStore:
    def __init__(self, cfg: RunConfig, run_dir: RunDir, console: Console) -> None:
        self.cfg, self.run_dir, self.console = cfg, run_dir, console
        self._loaded: dict[tuple[Any, ...], LoadResult] = {}
        self._by_id: dict[str, Sample] = {}

    def source_path(self, source: DataSource) -> Path:
        path = Path(source.path)
        if source.synthetic and not path.is_absolute():
            path = self.run_dir.root / "data" / path  # generated data lives with the run
        return path

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
                              limit=source.limit, columns=source.columns, split=source.split,
                              streaming=source.streaming)
        if result.skipped:
            self.console.print(result.summary())
        self._loaded[key] = result
        for s in result.samples:
            self._by_id.setdefault(s.id, s)
        return result

    def load_all(self, sources: Sequence[DataSource]) -> list[Sample]:
        """A stage's questions: every source once, mixed by weight (seeded); one source is kept in order."""
        if not sources:
            raise ValueError("no data: set `data` in the config or `data` on the stage")
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
                             cache_dir=self.cfg.media.cache_dir or str(self.run_dir.root / "media-cache"))
