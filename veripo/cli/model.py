"""``veripo model build-tiny DIR`` and ``veripo model info DIR``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Build and inspect model directories.", no_args_is_help=True)

    @model_app.command("build-tiny")
    def build_tiny_command(
        directory: Path = typer.Argument(..., help="Where to write the model (created if missing)."),
        size: str = typer.Option("tiny", "--size", help="tiny (~1.3M parameters) or small (~24M)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random initialisation."),
        family: str = typer.Option("qwen2.5-vl", "--family", help="qwen2.5-vl, qwen3-vl or qwen3.5."),
    ) -> None:
        """Build a randomly initialised Qwen2.5-VL, Qwen3-VL or Qwen3.5 with a locally trained tokenizer, offline,
        into DIRECTORY."""
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from veripo.models.families import FAMILY_NAMES
        from veripo.models.tiny import SIZES, build_tiny

        if size not in SIZES:
            typer.secho(f"error: --size {size!r} is not one of {sorted(SIZES)}", fg="red", err=True)
            raise typer.Exit(2)
        if family not in FAMILY_NAMES:
            typer.secho(f"error: --family {family!r} is not one of {sorted(FAMILY_NAMES)}", fg="red", err=True)
            raise typer.Exit(2)
        console = Console()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            progress.add_task(f"building {size} {family} model (seed {seed}) in {directory}", total=None)
            out = build_tiny(directory, size, seed, family=family)  # type: ignore[arg-type]
        console.print(f"[green]built[/green] {size} {family} in {out}")
        _print_info(out, console)

    @model_app.command("info")
    def info_command(directory: Path = typer.Argument(..., help="A model directory.")) -> None:
        """Load DIRECTORY with load_policy and print its architecture, sizes and special tokens."""
        from rich.console import Console

        console = Console()
        try:
            _print_info(directory, console)
        except ValueError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None

    app.add_typer(model_app, name="model")


def _print_info(directory: Path, console) -> None:
    from rich.table import Table

    from veripo.models.generation import vision_token_ids
    from veripo.models.loading import load_policy
    from veripo.models.tiny import count_parameters

    policy = load_policy(directory)
    config = policy.model.config
    text, vision = config.text_config, config.vision_config
    counts = count_parameters(policy.model)
    table = Table(title=str(directory), show_header=False)
    rows = [
        ("model_type", f"{config.model_type} (family {policy.processor.family.name})"),
        ("shared prefix", ("exact" if policy.processor.family.shared_prefix_exact else "per-sequence fallback")
                          + f": {policy.processor.family.shared_prefix_note}"),
        ("parameters", f"{counts['total']:,} (vision {counts['vision']:,}, language {counts['language']:,})"),
        ("text", f"hidden {text.hidden_size}, layers {text.num_hidden_layers}, heads "
                 f"{text.num_attention_heads}/{text.num_key_value_heads} kv, vocab {text.vocab_size}"),
        ("vision", f"hidden {vision.hidden_size}, depth {vision.depth}, patch {vision.patch_size}, temporal "
                   f"patch {vision.temporal_patch_size}, merge {vision.spatial_merge_size}"),
        ("tokenizer", f"{len(policy.tokenizer)} tokens, eos {policy.tokenizer.eos_token!r}, "
                      f"pad {policy.tokenizer.pad_token!r}"),
        ("vision token ids", ", ".join(map(str, vision_token_ids(policy.tokenizer)))),
        ("chat template", "yes" if policy.processor.chat_template else "no"),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
