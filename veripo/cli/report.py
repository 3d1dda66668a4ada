"""``veripo report RUN_DIR`` and ``veripo compare RUN_A RUN_B ... [--out DIR]``: plots, HTML and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>-<stamp>).")) -> None:
        """Write RUN_DIR/report/{index.html, summary.md, *.png} and print the path of index.html."""
        from veripo.report import write_report

        try:
            path = write_report(run_dir)
        except FileNotFoundError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(str(path))

    @app.command("compare")
    def compare(
        run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories (e.g. VerIPO and GRPO-only)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: compare-<runs> beside the first run)."),
    ) -> None:
        """Plot runs side by side and overlaid; write index.html and summary.md; print the path of index.html."""
        from veripo.report import write_comparison

        try:
            path = write_comparison(run_dirs, out)
        except (FileNotFoundError, ValueError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(str(path))
