"""A study: the arms of a comparison (VerIPO and its baselines, ``veripo.recipes.baselines``) over several
seeds, each run an ordinary run directory, at most ``parallel`` of them at once, resumable as a whole.

Layout (``veripo study`` then writes its tables and plots beside, ``veripo.report.study``)::

    <study>/study-config.json          the config and overrides it was started with (a rerun must match)
    <study>/<arm>/seed-<k>/config.yaml the run's config (for a baseline: built from the VerIPO run of seed k)
    <study>/<arm>/seed-<k>/<name>-<stamp>/   the run directory (docs/run-directory.md)
    <study>/<arm>/seed-<k>/log.txt     the run's output; done.json once it finished

Running it again skips finished runs (``done.json``), resumes interrupted ones (``veripo run --resume``) and
starts the rest.

A fork (``ForkPoint``: ``veripo study --fork-from STUDY --from-stage NAME``) screens the settings of one stage
without training the ones before it again: each VerIPO run is a copy of that study's VerIPO run of the same seed,
cut back to before stage NAME (its state, and the folders of that stage and the later ones, removed), which then
resumes under this study's config (``veripo run --resume --allow-config-change``, the diff recorded in its
state.json). A resumed run is exact, so each seed's fork is what a whole run of this config trains. The config may
differ from the forked runs' only in the stages from NAME on (stage-level keys) and in ``iterations``; any other
difference is refused, as the stages before NAME were trained without it. ``<arm>/seed-<k>/forked.json`` names
the run it was copied from. A baseline starts only when the VerIPO run of its seed has finished: it takes that run's
warm start, its data and (for ``grpo-time``) its wall time. Each run is a ``veripo run`` process of its own
(one torch thread each unless VERIPO_THREADS says otherwise); SIGTERM or Ctrl-C on the study stops them all
after their next checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from veripo.config import RunConfig, dump_yaml, load
from veripo.config.core import to_dict
from veripo.errors import RunStateError, Stopped, UserError
from veripo.recipes.baselines import grpo_only_config, sft_only_config
from veripo.recipes.run_dir import RunDir, atomic_write_json, atomic_write_text, config_sha256, read_json
from veripo.recipes.veripo import plan

VERIPO = "veripo"
ARMS: dict[str, str] = {  # name -> what it is, in the order the report shows them
    VERIPO: "VerIPO: the config as given",
    "grpo-rollouts": "GRPO only, from the same warm start, as many rollout groups as VerIPO's GRPO stages drew",
    "sft-only": "SFT only, from the same warm start, on the reference chains of VerIPO's GRPO questions",
    "grpo-time": "GRPO only, from the same warm start, for VerIPO's wall time after the warm start (secondary: "
                 "wall time is neither reproducible nor exact on resume)",
}
DONE = "done.json"
FORKED = "forked.json"
# what a fork's config may change besides the stages from the fork point on
FORK_FREE_KEYS = ("output_dir", "stages", "loop", "iterations")


@dataclass(frozen=True)
class ForkPoint:
    """Another study's finished VerIPO runs, continued from before the stage named ``stage``."""

    study: Path
    stage: str

    def source_run(self, seed: int) -> Path:
        run = finished_run(run_folder(self.study, VERIPO, seed))
        if run is None:
            raise UserError(f"--fork-from {self.study}: no finished VerIPO run of seed {seed} "
                            f"({run_folder(self.study, VERIPO, seed)})")
        return run

    def cut(self, source: Path) -> int:
        """How many of the source run's stages the fork keeps: those before ``stage``."""
        names = [entry["name"] for entry in RunDir.open_existing(source).read_state().get("completed", [])]
        if self.stage not in names:
            raise UserError(f"--from-stage {self.stage!r}: {source} has no finished stage of that name "
                            f"(its stages: {', '.join(names) or 'none'})")
        return names.index(self.stage)


def fork_difference(source: RunConfig, fork: RunConfig, cut: int) -> str | None:
    """Where ``fork`` differs from ``source`` in something the first ``cut`` stages were trained with (a global
    key, or those stages' own settings), as a dotted key; None when only the later stages differ."""
    a, b = to_dict(source), to_dict(fork)
    for key in a.keys() | b.keys():
        if key not in FORK_FREE_KEYS and a.get(key) != b.get(key):
            inner = a.get(key), b.get(key)
            if all(isinstance(x, dict) for x in inner):
                sub = next(k for k in inner[0].keys() | inner[1].keys() if inner[0].get(k) != inner[1].get(k))
                return f"{key}.{sub}"
            return key
    before = plan(source)[:cut], plan(fork)[:cut]
    for stage_a, stage_b in zip(*before):
        if stage_a != stage_b:
            return f"the settings of stage {stage_a.name!r}"
    if len(before[1]) < cut:
        return f"the number of stages (the fork has {len(plan(fork))}, the fork point is stage {cut + 1})"
    return None


def check_fork(fork: ForkPoint, cfg: RunConfig, seeds: Sequence[int]) -> None:
    """Refuse a fork whose config changes what the kept stages were trained with, before any run starts."""
    for seed in seeds:
        source = fork.source_run(seed)
        where = fork_difference(load(RunConfig, source / "config.yaml"), dataclasses.replace(cfg, seed=seed),
                                fork.cut(source))
        if where is not None:
            raise UserError(f"--fork-from {fork.study} --from-stage {fork.stage}: the config differs from "
                            f"{source / 'config.yaml'} in {where}, which the stages before {fork.stage!r} were "
                            "trained without; a fork may change only the stages from the fork point on (stage-level "
                            "keys: stages.N.dpo.lr, loop.N.verifier.pair_types, ...) and iterations")


def copy_run_before(source: Path, folder: Path, cut: int) -> Path:
    """Copy run ``source`` into ``folder`` without the folders of stage ``cut`` and later ones, its state cut back
    to the first ``cut`` stages; returns the copy (made under ``folder/.partial`` first, so an interrupted copy is
    never taken for a run)."""
    partial = folder / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    original = RunDir.open_existing(source)
    # the later stages' folders, named as the run names them (RunDir.stage_path)
    later = {original.stage_path(e["index"], e["name"]) for e in original.read_state().get("completed", [])[cut:]}

    def later_stages(directory: str, names: list[str]) -> list[str]:
        skip = [".lock"] if Path(directory) == source else []
        return skip + [n for n in names if Path(directory) / n in later]

    copy = partial / source.name
    shutil.copytree(source, copy, ignore=later_stages, symlinks=True)
    run = RunDir.open_existing(copy)
    state = run.read_state()
    state["completed"], state["current"] = state.get("completed", [])[:cut], None
    run.write_state(state)
    target = folder / source.name
    copy.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def run_folder(study_dir: Path, arm: str, seed: int) -> Path:
    return study_dir / arm / f"seed-{seed}"


def find_run(folder: Path) -> Path | None:
    """The run directory inside ``folder`` (the newest one holding a state.json), or None."""
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / "state.json").is_file()] if folder.is_dir() else []
    return max(runs, key=lambda p: p.name, default=None)


def finished_run(folder: Path) -> Path | None:
    """The run directory of a run the study saw finish, or None."""
    done = read_json(folder / DONE)
    return folder / done["run"] if isinstance(done, dict) and (folder / str(done.get("run"))).is_dir() else None


def arm_config(arm: str, cfg: RunConfig, seed: int, veripo_run: Path | None) -> RunConfig:
    """The config of ``arm``'s run for ``seed`` (a baseline needs the finished VerIPO run of that seed)."""
    seeded = dataclasses.replace(cfg, seed=seed)
    if arm == VERIPO:
        return seeded
    if veripo_run is None:
        raise ValueError(f"arm {arm!r} is built from a finished VerIPO run")
    if arm == "grpo-rollouts":
        return grpo_only_config(seeded, veripo_run, budget="rollouts")
    if arm == "sft-only":
        return sft_only_config(seeded, veripo_run)
    if arm == "grpo-time":
        return grpo_only_config(seeded, veripo_run, budget="time")
    raise ValueError(f"unknown arm {arm!r}: expected one of {', '.join(ARMS)}")


def check_arms(arms: Sequence[str]) -> None:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise UserError(f"unknown arm(s) {', '.join(unknown)}: expected some of {', '.join(ARMS)}")
    if VERIPO not in arms:
        raise UserError(f"the arms must include {VERIPO!r}: every baseline starts from its warm start")


def record_study_config(study_dir: Path, cfg: RunConfig, fork: ForkPoint | None = None) -> None:
    """Keep the study's config in ``study-config.json``; a rerun with another config is refused (its finished
    runs would be compared with runs of a different setting). A fork's source and stage count as config."""
    text = dump_yaml(cfg)
    if fork is not None:
        text += f"# forked from {fork.study.resolve()} before stage {fork.stage}\n"
    path = study_dir / "study-config.json"
    recorded = read_json(path)
    if recorded is None:
        atomic_write_json(path, {"sha256": config_sha256(text), "text": text})
    elif recorded.get("sha256") != config_sha256(text):
        raise RunStateError(f"{path}: this study was started with another config (other overrides or an edited "
                            f"config file); rerun it with the same ones, or use a new --out folder")


class _Scheduler:
    """Starts the runs in order, at most ``parallel`` at once, a baseline after its seed's VerIPO run."""

    def __init__(self, study_dir: Path, cfg: RunConfig, tasks: list[tuple[str, int]], parallel: int,
                 log: Callable[[str], None], fork: ForkPoint | None = None):
        self.study_dir, self.cfg, self.parallel, self.log, self.fork = study_dir, cfg, parallel, log, fork
        self.pending = list(tasks)
        self.running: dict[tuple[str, int], subprocess.Popen] = {}
        self.failed: dict[tuple[str, int], str] = {}
        self.stop_signal: int | None = None

    def finished(self, arm: str, seed: int) -> Path | None:
        return finished_run(run_folder(self.study_dir, arm, seed))

    def start(self, arm: str, seed: int) -> None:
        folder = run_folder(self.study_dir, arm, seed)
        folder.mkdir(parents=True, exist_ok=True)
        existing = find_run(folder)
        forked = arm == VERIPO and self.fork is not None
        if forked and existing is None:
            source = self.fork.source_run(seed)
            existing = copy_run_before(source, folder, self.fork.cut(source))
            atomic_write_json(folder / FORKED, {"from": str(source.resolve()), "before_stage": self.fork.stage})
            self.log(f"{arm} seed {seed}: forked {source} before stage {self.fork.stage}")
        if forked:
            run_cfg = dataclasses.replace(arm_config(arm, self.cfg, seed, None), output_dir=str(folder.resolve()))
            atomic_write_text(existing / "config.yaml", dump_yaml(run_cfg))  # this study's config from the fork on
            args, what = ["--resume", str(existing), "--allow-config-change"], f"continuing the fork {existing}"
        elif existing is not None:
            args, what = ["--resume", str(existing)], f"resuming {existing}"
        else:
            veripo_run = self.finished(VERIPO, seed) if arm != VERIPO else None
            run_cfg = dataclasses.replace(arm_config(arm, self.cfg, seed, veripo_run), output_dir=str(folder.resolve()))
            atomic_write_text(folder / "config.yaml", dump_yaml(run_cfg))
            args, what = [str(folder / "config.yaml")], "starting"
        self.log(f"{arm} seed {seed}: {what}")
        with open(folder / "log.txt", "a", encoding="utf-8") as out:
            self.running[(arm, seed)] = subprocess.Popen([sys.executable, "-m", "veripo", "run", *args], stdout=out,
                                                         stderr=subprocess.STDOUT, env=os.environ.copy())

    def ready(self, arm: str, seed: int) -> bool | None:
        """True: can start; False: wait for its VerIPO run; None: never (that run failed)."""
        if arm == VERIPO:
            return True
        if (VERIPO, seed) in self.failed:
            return None
        return self.finished(VERIPO, seed) is not None

    def reap(self) -> None:
        for (arm, seed), proc in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[(arm, seed)]
            folder = run_folder(self.study_dir, arm, seed)
            run = find_run(folder)
            if code == 0 and run is not None:
                atomic_write_json(folder / DONE, {"run": run.name})
                self.log(f"{arm} seed {seed}: finished ({run})")
            else:
                self.failed[(arm, seed)] = f"exit code {code}, see {folder / 'log.txt'}"
                self.log(f"{arm} seed {seed}: failed ({self.failed[(arm, seed)]})")

    def step(self) -> None:
        for arm, seed in list(self.pending):
            if len(self.running) >= self.parallel:
                break
            ready = self.ready(arm, seed)
            if ready is None:
                self.pending.remove((arm, seed))
                self.failed[(arm, seed)] = f"the VerIPO run of seed {seed} failed"
            elif ready:
                self.pending.remove((arm, seed))
                self.start(arm, seed)

    def stop_all(self) -> None:
        for proc in self.running.values():  # each stops after its next checkpoint (the stage loop's SIGTERM)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running.values():
            proc.wait()


def run_study(cfg: RunConfig, study_dir: Path, seeds: Sequence[int], arms: Sequence[str], parallel: int = 2,
              log: Callable[[str], None] = print, poll_s: float = 0.5, fork: ForkPoint | None = None) -> dict[str, str]:
    """Run (or continue) every arm x seed under ``study_dir``; returns the runs that failed ("arm seed-k" ->
    why). SIGTERM stops the running runs after their next checkpoint and raises ``Stopped``. With ``fork``
    the VerIPO runs continue that study's runs from before its stage (module docstring)."""
    check_arms(arms)
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: expected at least 1 run at a time")
    if fork is not None:
        if fork.study.resolve() == study_dir.resolve():
            raise UserError(f"--fork-from {fork.study}: a study cannot fork its own runs; give a new --out folder")
        check_fork(fork, cfg, seeds)
    study_dir.mkdir(parents=True, exist_ok=True)
    record_study_config(study_dir, cfg, fork)
    tasks = [(arm, seed) for seed in seeds for arm in ARMS if arm in arms]
    scheduler = _Scheduler(study_dir, cfg, [t for t in tasks if scheduler_needed(study_dir, *t)], parallel, log,
                           fork)
    for arm, seed in tasks:
        if (arm, seed) not in scheduler.pending:
            log(f"{arm} seed {seed}: already finished")

    def on_term(signum, frame):
        scheduler.stop_signal = signum

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while scheduler.pending or scheduler.running:
            if scheduler.stop_signal is not None:
                scheduler.stop_all()
                raise Stopped(f"the study in {study_dir} stopped; run the same command again to continue it")
            scheduler.step()
            time.sleep(poll_s)
            scheduler.reap()
    except BaseException:
        scheduler.stop_all()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return {f"{arm} seed-{seed}": why for (arm, seed), why in scheduler.failed.items()}


def scheduler_needed(study_dir: Path, arm: str, seed: int) -> bool:
    return finished_run(run_folder(study_dir, arm, seed)) is None


def study_runs(study_dir: Path, seeds: Sequence[int], arms: Sequence[str]) -> dict[str, dict[int, Path]]:
    """The finished run directories: arm -> seed -> run directory (arms and seeds without one left out)."""
    found: dict[str, dict[int, Path]] = {}
    for arm in ARMS:
        if arm in arms:
            runs = {seed: run for seed in seeds if (run := finished_run(run_folder(study_dir, arm, seed)))}
            if runs:
                found[arm] = runs
    return found
