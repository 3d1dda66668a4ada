"""The ``veripo`` command. Each area registers its commands from its own module in this package;
commands import their heavy dependencies (torch, transformers) inside the function so ``--help`` is fast."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="veripo",
    help="Train video LLMs with VerIPO: GRPO explores, a rollout-aware verifier builds pairs, DPO aligns.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the veripo, torch and transformers versions."""
    import importlib.metadata as md

    for name in ("veripo", "torch", "transformers"):
        try:
            typer.echo(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            typer.echo(f"{name} not installed")


def _register() -> None:
    # Each area adds its module here: it defines register(app) that adds its commands or sub-apps.
    from veripo.cli import config as config_cli
    from veripo.cli import data as data_cli
    from veripo.cli import demo as demo_cli
    from veripo.cli import sample as sample_cli
    from veripo.cli import eval as eval_cli
    from veripo.cli import export as export_cli
    from veripo.cli import model as model_cli
    from veripo.cli import report as report_cli
    from veripo.cli import score as score_cli
    from veripo.cli import train as train_cli
    from veripo.cli import verify as verify_cli

    for module in (train_cli, config_cli, report_cli, data_cli, model_cli, demo_cli, sample_cli, score_cli, eval_cli, verify_cli, export_cli):
        module.register(app)


_register()


def main() -> None:
    """The console entry point: the app, then (under torchrun) every rank leaves the process group together."""
    try:
        app()
    except SystemExit as stop:
        if "torch.distributed" in sys.modules:  # never imports torch for --help
            from veripo.parallel import finish_process

            code = stop.code
            finish_process(code if isinstance(code, int) else (0 if code is None else 1))
        raise
