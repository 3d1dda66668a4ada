"""What a recipe is handed: the run config, its stage, the policy, the questions, the parallel strategy, and
where to write; and what it hands on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from veripo.config import RunConfig, Stage
from veripo.data.records import Sample
from veripo.parallel import DistInfo, ParallelStrategy, Precision
from veripo.report.trackers import Trackers


@dataclass
class StageContext:
    cfg: RunConfig
    stage: Stage
    index: int  # position of the stage in the run
    stage_dir: Path
    policy: Any  # veripo.models.Policy: model, processor, tokenizer
    samples: list[Sample]
    encode: Callable[[Sample], dict[str, Any]]  # a sample -> its prompt's model inputs (batch of one)
    parallel: ParallelStrategy | None = None  # None: one process (a ParallelStrategy prepared with the policy)
    global_step: int = 0  # optimizer steps taken by earlier stages
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    inputs: dict[str, Path] = field(default_factory=dict)  # files from earlier stages (rollouts, pairs)
    # the held-out evaluation (``eval.heldout``) into a folder: metrics per benchmark on rank 0, {} elsewhere;
    # None: the run has no held-out set (``eval_every`` then has nothing to evaluate)
    evaluate: Callable[[Path], dict[str, dict[str, Any]]] | None = None
    trackers: Trackers = field(default_factory=Trackers)  # logging.trackers (rank 0; none elsewhere)

    def __post_init__(self) -> None:
        if self.parallel is None:
            self.parallel = ParallelStrategy(precision=Precision.of(self.cfg.model))
            self.parallel.prepare(self.policy.model)

    @property
    def dist(self) -> DistInfo:
        """Which rank this is, of how many."""
        return self.parallel.info

    def section(self, name: str) -> Any:
        """The run's config section ``name`` with this stage's overrides."""
        return self.cfg.section_for(self.stage, name)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self.console.print(f"[dim]\\[{self.stage.name}][/dim] {message}")


@dataclass
class StageResult:
    """What a stage hands on: its optimizer steps, output files and numbers for the summary."""

    steps: int = 0
    outputs: dict[str, Path] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
