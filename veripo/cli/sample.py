"""``veripo sample``: ask a model about a rendered moving-square video and print sampled rollouts.

A quick look at what a model (the tiny one built on first use, or any checkpoint of a run) writes: offline
model build, numpy video patchifier, chat prompt, M-RoPE generation with vision tokens suppressed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import typer

SQUARE_COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220)}


def render_moving_square(num_frames: int = 8, side: int = 112, square: int = 20, colour: str = "red",
                         direction: str = "right") -> np.ndarray:
    """(num_frames, side, side, 3) uint8: a coloured square crossing a gray background in ``direction``.

    ``side`` must be a multiple of 28 (the Qwen2-VL patch grid). The square moves evenly from one edge
    region to the other, so the direction is unambiguous from the first and last frames.
    """
    if side % 28 or side < 56:
        raise ValueError(f"side must be a multiple of 28 and >= 56, got {side}")
    frames = np.full((num_frames, side, side, 3), 128, dtype=np.uint8)
    travel = side - square - 8
    for t in range(num_frames):
        step = 4 + round(travel * t / max(1, num_frames - 1))
        x, y = {"right": (step, side // 2 - square // 2), "left": (side - square - step, side // 2 - square // 2),
                "down": (side // 2 - square // 2, step), "up": (side // 2 - square // 2, side - square - step)}[direction]
        frames[t, y : y + square, x : x + square] = SQUARE_COLOURS[colour]
    return frames


def default_model_dir() -> Path:
    """Where the demo keeps its tiny model: $VERIPO_CACHE_DIR or ~/.cache/veripo, then models/tiny-seed0."""
    root = os.environ.get("VERIPO_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "veripo"
    return Path(root) / "models" / "tiny-seed0"


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(
        model_dir: Path | None = typer.Option(None, help="Model directory, e.g. a run's checkpoint (default: a "
                                                            "cached random tiny model, built on first use)."),
        rollouts: int = typer.Option(4, min=1, help="Responses to sample."),
        max_new_tokens: int = typer.Option(64, min=1, help="Tokens per response."),
        temperature: float = typer.Option(1.0, min=0.0, help="0 = greedy."),
        seed: int = typer.Option(0, help="Sampling seed (the same seed prints the same rollouts)."),
        style: str = typer.Option("veripo", help="Prompt style: veripo or videor1."),
    ) -> None:
        """Render a moving-square video, ask which way it moves and print sampled reasoning rollouts."""
        import torch
        from rich.console import Console
        from rich.panel import Panel
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        from veripo.data.records import Sample
        from veripo.models.generation import sample_responses
        from veripo.models.loading import load_policy
        from veripo.models.prompts import PROMPT_STYLES, encode_prompt
        from veripo.models.tiny import build_tiny

        if style not in PROMPT_STYLES:
            typer.secho(f"error: --style {style!r} is not one of {sorted(PROMPT_STYLES)}", fg="red", err=True)
            raise typer.Exit(2)
        # A 1M-parameter model is too small to gain from intra-op threads; on a shared, busy CPU extra threads
        # made sampling 20x slower in our measurements.
        torch.set_num_threads(1)
        console = Console()
        directory = model_dir or default_model_dir()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            if not (directory / "config.json").exists():
                if model_dir is not None:
                    typer.secho(f"error: {directory} has no config.json", fg="red", err=True)
                    raise typer.Exit(2)
                task = progress.add_task(f"building the tiny model in {directory}", total=1)
                build_tiny(directory, "tiny", seed=0)
                progress.advance(task)
            task = progress.add_task("loading the policy", total=1)
            policy = load_policy(directory)
            progress.advance(task)
            frames = render_moving_square()
            sample = Sample(id="demo/moving-square", problem="Which direction does the red square move?",
                            problem_type="multiple choice", answer="B",
                            options=["A. left", "B. right", "C. up", "D. down"], video="<rendered>",
                            data_type="video", source="demo")
            inputs = encode_prompt(policy, sample, frames=frames, video_fps=2.0, style=style)
            task = progress.add_task(f"sampling {rollouts} rollouts", total=rollouts)
            responses = sample_responses(policy, inputs, rollouts, max_new_tokens=max_new_tokens,
                                         temperature=temperature, seed=seed)
            progress.advance(task, rollouts)
        grid = inputs["video_grid_thw"][0].tolist()
        console.print(Panel(
            f"{sample.problem}\n" + "\n".join(sample.options) + f"\n\nvideo: {frames.shape[0]} frames of "
            f"{frames.shape[2]}x{frames.shape[1]} px -> grid {grid}, prompt {inputs['input_ids'].shape[1]} tokens; "
            f"gold answer {sample.answer}", title="question", border_style="cyan"))
        for index, response in enumerate(responses):
            status = "finished" if response.finished else f"cut at {max_new_tokens} tokens"
            console.print(Panel(response.text or "(empty)", title=f"rollout {index} ({len(response.token_ids)} "
                                f"tokens, {status})", border_style="green" if response.finished else "yellow"))
        console.print("[dim]The tiny model is randomly initialised: its rollouts are noise until it is trained.[/dim]")
