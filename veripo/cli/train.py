"""``veripo run CONFIG`` (the whole VerIPO loop) and ``veripo sft|grpo|dpo CONFIG`` (one phase alone).

Arguments after CONFIG are dotted ``key=value`` overrides (``grpo.lr=1e-6 rollout.num_generations=4``).
Under ``accelerate launch`` / ``torchrun`` every process runs the same command (see docs/scaling.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

OVERRIDES_HELP = "[CONFIG.yaml] [key=value ...]: a YAML config, then dotted overrides (e.g. grpo.lr=1e-6)."


def _load(args: list[str] | None, extra: list[str] | None = None):
    from veripo.config import ConfigError, RunConfig, load

    args = list(args or [])
    config = Path(args.pop(0)) if args and "=" not in args[0] else None
    try:
        return load(RunConfig, config, [*args, *(extra or [])])
    except ConfigError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None


def configure_torch_threads() -> None:
    """One intra-op thread per process unless VERIPO_THREADS says otherwise: the tiny model's kernels are
    too small to gain from threads, and oversubscribed threads on a busy laptop cost 10x or more."""
    import torch

    torch.set_num_threads(int(os.environ.get("VERIPO_THREADS", "1")))


def quiet_libraries() -> None:
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def run_config(cfg, resume: Optional[Path], inputs: Optional[dict[str, Path]] = None) -> Path:
    from veripo.config import ConfigError
    from veripo.recipes.veripo import run

    configure_torch_threads()
    quiet_libraries()
    try:
        run_dir = run(cfg, resume=resume, inputs=inputs)
    except ConfigError as e:  # found when the run starts (an unregistered algorithm, a tracker not installed)
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    return run_dir.root


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        args: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory "
                                              "(its own config.yaml is used; overrides are refused)."),
    ) -> None:
        """Run the VerIPO loop of CONFIG: its stages in order, then its loop x iterations, then the report."""
        if resume is not None and args:
            typer.secho("error: --resume continues a run with its own config; drop the config/overrides", fg="red", err=True)
            raise typer.Exit(2)
        cfg = _load(args) if resume is None else None
        root = run_config(cfg, resume)
        typer.echo(str(root))

    for kind, what in (("sft", "the SFT warm start on reference chains of thought"),
                       ("grpo", "one GRPO phase (rollouts, rule rewards, clipped policy gradient)"),
                       ("dpo", "one DPO phase on a pairs file (--pairs)")):
        _register_phase(app, kind, what)


def _register_phase(app: typer.Typer, kind: str, what: str) -> None:
    def phase_cmd(
        args: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
        model: Optional[Path] = typer.Option(None, "--model", help="Start from this model directory "
                                             "(e.g. a checkpoint of an earlier run); default: the config's model."),
        pairs: Optional[Path] = typer.Option(None, "--pairs", help="DPO only: the pairs file (from `veripo verify`)."),
    ) -> None:
        import dataclasses

        from veripo.config import Stage

        extra = [f"model.path={model}"] if model is not None else []
        cfg = _load(args, extra)
        if kind == "dpo" and pairs is None:
            typer.secho("error: veripo dpo needs --pairs PAIRS.jsonl (write one with `veripo verify`)", fg="red", err=True)
            raise typer.Exit(2)
        cfg = dataclasses.replace(cfg, stages=(Stage(name=kind, kind=kind),), loop=(), name=f"{cfg.name}-{kind}")
        root = run_config(cfg, None, inputs={"pairs": pairs.resolve()} if pairs is not None else None)
        typer.echo(str(root))

    phase_cmd.__doc__ = f"Run {what} alone, as a one-stage run (same run directory layout)."
    app.command(kind)(phase_cmd)
