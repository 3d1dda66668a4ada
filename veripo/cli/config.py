"""``veripo config show CONFIG [key=value ...]``: the fully expanded config after overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="Inspect and validate configs.", no_args_is_help=True)

    @config_app.command("show")
    def show(
        args: Optional[list[str]] = typer.Argument(
            None, help="[CONFIG.yaml] [key=value ...]: a YAML config (omitted = defaults), then dotted overrides."
        ),
    ) -> None:
        """Validate CONFIG with overrides and print the fully expanded result as YAML."""
        from veripo.config import RunConfig, dump_yaml, load

        args = list(args or [])
        config = Path(args.pop(0)) if args and "=" not in args[0] else None
        cfg = load(RunConfig, config, args)
        for warning in cfg.warnings():
            typer.secho(f"warning: {warning}", fg="yellow", err=True)
        typer.echo(dump_yaml(cfg))

    app.add_typer(config_app, name="config")
