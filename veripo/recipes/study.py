"""A study: the arms of a comparison (VerIPO and its baselines, ``veripo.recipes.baselines``) over several
seeds, each run an ordinary run directory, at most ``parallel`` of them at once, resumable as a whole.

Layout (``veripo study`` then writes its tables and plots beside, ``veripo.report.study``)::

    <study>/study-config.json          the config and overrides it was started with (a rerun must match)
    <study>/<arm>/seed-<k>/config.yaml the run's config (for a baseline: built from the VerIPO run of seed k)
    <study>/<arm>/seed-<k>/<name>-<stamp>/   the run directory (docs/run-directory.md)
    <study>/<arm>/seed-<k>/log.txt     the run's output; done.json once it finished

Running it again skips finished runs (``done.json``), resumes interrupted ones (``veripo run --resume``) and
starts the rest. A baseline starts only when the VerIPO run of its seed has finished: it takes that run's
warm start, its data and (for ``grpo-time``) its wall time. Each run is a ``veripo run`` process of its own
(one torch thread each unless VERIPO_THREADS says otherwise); SIGTERM or Ctrl-C on the study stops them all
after their next checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from veripo.config import RunConfig, dump_yaml
from veripo.errors import RunStateError, Stopped, UserError
from veripo.recipes.baselines import grpo_only_config, sft_only_config
from veripo.recipes.run_dir import atomic_write_json, atomic_write_text, config_sha256, read_json

VERIPO = "veripo"
ARMS: dict[str, str] = {  # name -> what it is, in the order the report shows them
    VERIPO: "VerIPO: the config as given",
    "grpo-rollouts": "GRPO only, from the same warm start, as many rollout groups as VerIPO's GRPO stages drew",
    "sft-only": "SFT only, from the same warm start, on the reference chains of VerIPO's GRPO questions",
    "grpo-time": "GRPO only, from the same warm start, for VerIPO's wall time after the warm start (secondary: "
                 "wall time is neither reproducible nor exact on resume)",
}
DONE = "done.json"


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


def record_study_config(study_dir: Path, cfg: RunConfig) -> None:
    """Keep the study's config in ``study-config.json``; a rerun with another config is refused (its finished
    runs would be compared with runs of a different setting)."""
    text = dump_yaml(cfg)
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
                 log: Callable[[str], None]):
        self.study_dir, self.cfg, self.parallel, self.log = study_dir, cfg, parallel, log
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
        if existing is not None:
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
              log: Callable[[str], None] = print, poll_s: float = 0.5) -> dict[str, str]:
    """Run (or continue) every arm x seed under ``study_dir``; returns the runs that failed ("arm seed-k" ->
    why). SIGTERM stops the running runs after their next checkpoint and raises ``Stopped``."""
    check_arms(arms)
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: expected at least 1 run at a time")
    study_dir.mkdir(parents=True, exist_ok=True)
    record_study_config(study_dir, cfg)
    tasks = [(arm, seed) for seed in seeds for arm in ARMS if arm in arms]
    scheduler = _Scheduler(study_dir, cfg, [t for t in tasks if scheduler_needed(study_dir, *t)], parallel, log)
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
