"""``veripo export RUN_DIR [--out DIR]``: the run's final policy (LoRA adapters merged) as a plain model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>-<stamp>)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/export)."),
    ) -> None:
        """Write the run's final weights (LoRA adapters merged into the base) where from_pretrained loads them;
        print the folder."""
        from veripo.config import ConfigError
        from veripo.cli.train import quiet_libraries
        from veripo.recipes.export import export_run

        quiet_libraries()
        try:
            path = export_run(run_dir, out)
        except (ConfigError, FileExistsError, ImportError, ValueError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(str(path))
