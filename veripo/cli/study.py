"""``veripo study [key=value ...]``: VerIPO and its baselines over several seeds, with confidence intervals.

Runs every arm (``veripo.recipes.study.ARMS``: VerIPO as configured, GRPO only for as many rollouts, SFT only,
GRPO only for the same wall time) for every seed, at most ``--parallel`` runs at once, each an ordinary run
directory under ``--out`` (running the command again skips finished runs and resumes interrupted ones), then
writes ``study.json``, ``study.csv``, ``study.md``, ``index.html`` and a plot of the intervals there.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

import typer

from veripo.cli.demo import DEMO_CONFIG


def _seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,5``."""
    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a range like 0-4 or a list like 0,2,5") from None


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study(
        args: Optional[list[str]] = typer.Argument(None, help="dotted key=value overrides of the config"),
        config: Path = typer.Option(DEMO_CONFIG, "--config", help="The VerIPO arm's config (default: the demo)."),
        seeds: str = typer.Option("0-4", "--seeds", help="Seeds: a range (0-4) or a list (0,2,5)."),
        arms: str = typer.Option("veripo,grpo-rollouts,sft-only,grpo-time", "--arms",
                                 help="Comma-separated arms: veripo, grpo-rollouts, sft-only, grpo-time."),
        parallel: int = typer.Option(2, "--parallel", help="Runs at once (one CPU thread each by default)."),
        out: Optional[Path] = typer.Option(None, "--out", help="The study folder (default: runs/study-<config name>)."),
        n_boot: int = typer.Option(10_000, "--n-boot", help="Bootstrap replicates per interval."),
        report_only: bool = typer.Option(False, "--report-only", help="Start no run: write the study's files "
                                         "from the runs that have finished so far."),
        fork_from: Optional[Path] = typer.Option(None, "--fork-from", help="Another study folder: each VerIPO run "
                                                 "continues that study's run of its seed from before --from-stage "
                                                 "(a screen of the later stages' settings; see docs/evaluation.md)."),
        from_stage: Optional[str] = typer.Option(None, "--from-stage", help="With --fork-from: the first stage "
                                                 "trained again (a stage name of those runs, e.g. verify-it1)."),
    ) -> None:
        """Run VerIPO and its baselines over seeds; write per arm and stage the mean, per-seed values and 95%
        bootstrap intervals, the paired differences in words, and a plot."""
        from veripo.cli.train import _load
        from veripo.recipes.study import ARMS, VERIPO, ForkPoint, run_study, study_runs
        from veripo.report.study import arm_stages, write_study

        if not config.exists():
            typer.secho(f"error: config {config} not found", fg="red", err=True)
            raise typer.Exit(2)
        if (fork_from is None) != (from_stage is None):
            typer.secho("error: --fork-from and --from-stage go together", fg="red", err=True)
            raise typer.Exit(2)
        fork = ForkPoint(fork_from, from_stage) if fork_from is not None and from_stage is not None else None
        seed_list = _seeds(seeds)
        arm_list = [a.strip() for a in arms.split(",") if a.strip()]
        cfg = _load([str(config), *(args or [])])
        study_dir = out if out is not None else Path(cfg.output_dir) / f"study-{cfg.name}"
        failed = {} if report_only else run_study(cfg, study_dir, seed_list, arm_list, parallel, log=typer.echo,
                                                  fork=fork)
        runs = study_runs(study_dir, seed_list, arm_list)
        if VERIPO not in runs:
            typer.secho("error: no VerIPO run finished; nothing to report", fg="red", err=True)
            raise typer.Exit(1)
        stages = {arm: arm_stages(arm, per_seed, None if arm == VERIPO else
                                  {s: runs[VERIPO][s] for s in per_seed})
                  for arm, per_seed in runs.items()}
        command = " ".join(["veripo study", *(["--config", str(config)] if config != DEMO_CONFIG else []),
                            f"--seeds {seeds}", f"--arms {','.join(arm_list)}",
                            *([f"--fork-from {fork.study} --from-stage {fork.stage}"] if fork else []), *(args or [])])
        meta = [f"command: {command}", f"machine: {_cpu_name()} ({platform.machine()}), "
                f"{platform.system()}, {_cpus()} CPU(s), {parallel} run(s) at a time",
                "seeds finished per arm: " + "; ".join(f"{a} {sorted(r)}" for a, r in runs.items())]
        path = write_study(study_dir, stages, descriptions=ARMS, reference=VERIPO, meta=meta, n_boot=n_boot)
        typer.echo(str(path))
        for run, why in failed.items():
            typer.secho(f"failed: {run}: {why}", fg="red", err=True)
        if failed:
            raise typer.Exit(1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
