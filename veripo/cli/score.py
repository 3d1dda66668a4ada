"""``veripo score FILE --profile NAME``: score a predictions file and print a table by problem type."""

from __future__ import annotations

from pathlib import Path

import typer

from veripo.cli.errors import fail


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        file: Path = typer.Argument(..., help="Video-R1 or VerIPO eval output (JSON), or our JSONL (samples + completion, or rollouts)."),
        profile: str = typer.Option("veripo", "--profile", "-p", help="videor1-train, videor1-eval, veripo-eval or veripo."),
        samples: Path | None = typer.Option(None, "--samples", help="Samples JSONL, needed to score rollouts.jsonl."),
        workers: int | None = typer.Option(None, "--workers", min=0, help="Scoring processes (0 = in this process)."),
        timeout_s: float = typer.Option(15.0, "--timeout", min=0.001, help="Seconds one item may take before it scores 0."),
    ) -> None:
        """Score every prediction in FILE with a scoring profile; print mean accuracy per problem type."""
        from rich.console import Console
        from rich.table import Table

        from veripo.rewards import get_profile, score_batch
        from veripo.rewards.predictions import load_predictions

        try:
            scoring = get_profile(profile)
        except KeyError as e:
            raise fail(e.args[0]) from None
        pairs = load_predictions(file, samples)  # a PredictionsError or OSError: the CLI's boundary, exit 2
        completions = [c for c, _ in pairs]
        items = [s for _, s in pairs]
        scores = score_batch(completions, items, scoring, workers=workers, timeout_s=timeout_s, progress=len(pairs) > 200)

        table = Table(title=f"{file.name}: profile {profile}")
        for column in ("problem type", "n", "accuracy", "format", "total"):
            table.add_column(column, justify="left" if column == "problem type" else "right")
        by_type: dict[str, list[dict[str, float]]] = {}
        for sample, row in zip(items, scores):
            by_type.setdefault(sample.problem_type, []).append(row)
        for kind, rows in sorted(by_type.items()) + [("all", list(scores))]:
            if not rows:
                continue
            table.add_row(
                kind,
                str(len(rows)),
                *(f"{100 * sum(r[k] for r in rows) / len(rows):.2f}" if k == "accuracy" else f"{sum(r[k] for r in rows) / len(rows):.3f}" for k in ("accuracy", "format", "total")),
                end_section=kind == max(by_type),
            )
        console = Console()
        console.print(table)
        console.print("accuracy in percent; format and total are means of the profile's rewards.")
        if scores.failures:
            console.print(f"[yellow]items scored 0 without a verdict: {dict(scores.failures)}[/yellow]")
