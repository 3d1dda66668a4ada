"""``veripo data make-synthetic OUT`` and ``veripo data inspect FILE``: make and look at datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Make synthetic datasets and inspect dataset files.", no_args_is_help=True)

    @data_app.command("make-synthetic")
    def make_synthetic_cmd(
        out: Path = typer.Argument(..., help="Folder to write (dataset.json + media/)."),
        n: int = typer.Option(300, "--n", min=1, help="Number of samples."),
        seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same dataset."),
        kinds: str = typer.Option("video,image,text", "--kinds", help="Comma-separated: video, image, text."),
        size: int = typer.Option(112, "--size", min=28, help="Frame side in pixels (a multiple of 28)."),
        min_frames: int = typer.Option(4, "--min-frames", min=1),
        max_frames: int = typer.Option(8, "--max-frames", min=1),
        difficulty: str = typer.Option("1,2", "--difficulty", help="Comma-separated levels from 1 (easy) to 3."),
        tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task names (default: all but "
                                            "the multi-step colour_steps and colour_before)."),
        chain: str = typer.Option("frames", "--chain", help="Reference chains: frames (every frame) or brief."),
    ) -> None:
        """Render synthetic video/image/text reasoning tasks as a Video-R1-format dataset folder."""
        from veripo.data.synthetic import make_synthetic

        try:
            path = make_synthetic(out, n=n, seed=seed, kinds=_csv(kinds), size=size, frames=(min_frames, max_frames),
                                  difficulties=[int(d) for d in _csv(difficulty)],
                                  tasks=_csv(tasks) if tasks else None, chain=chain, progress=True)
        except ValueError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {n} samples to {path}")

    @data_app.command("inspect")
    def inspect_cmd(
        file: Path = typer.Argument(..., help="A dataset JSON/JSONL file, a synthetic dataset folder, or a "
                                    "Hugging Face dataset: parquet/Arrow files, a dataset folder, hf:owner/name."),
        media_root: Optional[Path] = typer.Option(None, "--media-root", help="Media paths resolve under it."),
        format: str = typer.Option("auto", "--format", help="auto, videor1, videor1-eval, veripo-eval, jsonl or hf."),
        examples: int = typer.Option(3, "--examples", help="How many examples to print."),
        column: Optional[list[str]] = typer.Option(None, "--column", help="FIELD=COLUMN: a Hugging Face dataset's "
                                                   "column read as veripo's FIELD (repeatable)."),
        split: str = typer.Option("train", "--split", help="A Hugging Face dataset's split."),
    ) -> None:
        """Counts by problem type and data type, missing media, skipped records and a few examples."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from veripo.data.loaders import load_samples
        from veripo.rewards import gold_problem

        console = Console()
        pairs = [c.partition("=") for c in column or []]
        if any(not field or not sep or not name for field, sep, name in pairs):
            typer.secho(f"error: --column expects FIELD=COLUMN, got {column}", fg="red", err=True)
            raise typer.Exit(2)
        result = load_samples(file, media_root=media_root, format=format, require_media=False, check=gold_problem,
                              columns={field: name for field, _, name in pairs}, split=split)
        console.print(f"[bold]{file}[/bold]: format {result.format}, {len(result.samples)} samples, "
                      f"{len(result.skipped)} skipped, {len(result.missing_media)} with missing media")
        table = Table("problem type", "data type", "count")
        for (ptype, dtype), count in sorted(Counter((s.problem_type, s.data_type) for s in result.samples).items()):
            table.add_row(ptype, dtype, str(count))
        console.print(table)
        for title, records in (("missing media", result.missing_media), ("skipped", result.skipped)):
            for record in records[:20]:
                console.print(f"[yellow]{title}[/yellow]: {escape(_short(str(record), 500))}", highlight=False)
            if len(records) > 20:
                console.print(f"[yellow]... {len(records) - 20} more {title}[/yellow]")
        for sample in result.samples[:examples]:
            media = sample.video or ", ".join(sample.images) or "(text only)"
            body = [f"[bold]{escape(_short(sample.id, 200))}[/bold] "
                    f"{escape(f'[{sample.problem_type} / {sample.data_type}]')} {escape(_short(media, 300))}",
                    f"  Q: {escape(_short(sample.problem, 1000))}"]
            body += [f"     {escape(_short(o, 200))}" for o in sample.options[:26]]
            if len(sample.options) > 26:
                body.append(f"     ... {len(sample.options) - 26} more options")
            body.append(f"  gold: {escape(_short(sample.answer, 200))}")
            if sample.reasoning:
                body.append(f"  reasoning: {escape(_short(sample.reasoning, 200))}")
            console.print("\n".join(body), highlight=False)

    app.add_typer(data_app, name="data")


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out (a field can be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
