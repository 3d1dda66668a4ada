"""The ``veripo`` command. Each area registers its commands from its own module in this package;
commands import their heavy dependencies (torch, transformers) inside the function so ``--help`` is fast."""

from __future__ import annotations

import sys
import traceback

import typer
from typer._click import ClickException
from typer.core import TyperGroup

from veripo.cli.errors import describe_os_error, fail
from veripo.errors import Stopped, UserError


class ErrorBoundary(TyperGroup):
    """The one place the command turns failures into exit codes: a ``UserError`` (bad config, data, run
    directory; docs/reliability.md) or an ``OSError`` (disk full, permission denied, missing file) is printed
    in one or two lines with exit code 2; anything else is a bug: its traceback, where to report it, exit 1."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Stopped as e:
            typer.secho(f"stopped: {e}", fg="yellow", err=True)
            raise typer.Exit(e.exit_code) from None
        except UserError as e:
            raise fail(str(e)) from None
        except OSError as e:
            raise fail(describe_os_error(e)) from None
        except RecursionError:
            raise fail("input nested too deeply to read (deep JSON or YAML)") from None
        except Exception:
            traceback.print_exc()
            typer.secho("veripo: unexpected error (a bug in veripo). Please report it to the veripo maintainers with "
                        "the command, the config and the traceback above.", fg="red", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ErrorBoundary,
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
    from veripo.cli import plan as plan_cli
    from veripo.cli import report as report_cli
    from veripo.cli import score as score_cli
    from veripo.cli import study as study_cli
    from veripo.cli import train as train_cli
    from veripo.cli import verify as verify_cli

    for module in (train_cli, plan_cli, config_cli, report_cli, data_cli, model_cli, demo_cli, sample_cli, score_cli, eval_cli, verify_cli, export_cli,
                   study_cli):
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
