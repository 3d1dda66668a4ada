"""``veripo plan CONFIG [key=value ...]``: what a run will do and whether it fits, before anything is loaded.

Per stage: questions (counted from the data files, else the ``size:`` each entry declares), passes, rollouts,
optimizer steps, text and visual tokens; then the per-rank memory of the chosen parallel strategy (weights,
gradients, fp32 masters, optimizer, activations with and without gradient checkpointing, the rollout KV
cache) and a fits / does-not-fit verdict against ``hardware.gpu_memory_gib`` or ``--gpu-memory``. The model
is built on the meta device (``veripo.recipes.plan``), so it works where neither model nor data is present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from veripo.cli.train import OVERRIDES_HELP, _load


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= 10 * scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def print_plan(run, console) -> None:
    from rich.table import Table

    from veripo.recipes.plan import gib

    dims = run.dims
    console.print(f"[bold]model[/bold]: {run.model}: {dims.parameters:,} parameters ({dims.vision_parameters:,} in "
                  f"the vision tower), {dims.layers} layers of width {dims.hidden}")
    console.print(f"[bold]precision[/bold]: compute {run.dtype}, master weights and optimizer {run.master_dtype}; "
                  f"[bold]strategy[/bold]: {run.strategy} over {run.world} rank(s); gradient checkpointing "
                  f"{'on' if run.checkpointing else 'off'}")
    a = run.assumptions
    console.print(f"[dim]assumed: {a.prompt_text_tokens} text tokens per prompt, source video {a.video_seconds:g} s "
                  f"and frames/images {a.frame_width}x{a.frame_height} before the resize, responses as long as "
                  "max_new_tokens (upper bounds)[/dim]")

    work = Table(title="stages", show_lines=False)
    for col in ("stage", "kind", "questions", "from", "passes", "rollouts", "steps", "text tokens",
                "visual tokens", "visual input"):
        work.add_column(col, justify="right" if col not in ("stage", "kind", "from", "visual input") else "left")
    for st in run.stages:
        size = st.size
        froms = sorted({s.how for s in st.sources})
        work.add_row(st.name, st.kind, _count(st.questions) if st.sources else ("-" if st.kind != "dpo" else
                     _count(size.items if size else None) + " pairs"),
                     ", ".join(froms) or "-", f"{size.passes:.2f}" if size else "-",
                     _count(st.rollouts) if st.rollouts else "-", _count(size.steps) if size else "-",
                     _count(st.text_tokens) if st.text_tokens else "-",
                     _count(st.visual_tokens) if st.visual_tokens else "-",
                     st.visual.detail + f" = {st.visual.tokens} tokens" if st.visual else "-")
    console.print(work)

    s = run.states
    mem = Table(title=f"per-rank memory, GiB ({run.strategy}, {run.world} rank(s))")
    for col in ("stage", "weights", "grads", "masters", "optimizer", "activations", "activations (ckpt)",
                "rollout KV", "peak", "verdict"):
        mem.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
    for st in run.stages:
        if st.activations is None:
            continue
        fits = run.fits(st)
        limit = f"{run.gpu_memory_gib:g} GiB" if run.gpu_memory_gib is not None else ""
        verdict = ("no GPU memory given (--gpu-memory or hardware.gpu_memory_gib)" if fits is None else
                   f"fits in {limit}" if fits else f"[bold red]does not fit in {limit}[/bold red]")
        mem.add_row(st.name, gib(s.weights), gib(s.grads), gib(s.masters), gib(s.optimizer),
                    gib(st.activations.full), gib(st.activations.checkpointed),
                    gib(st.kv_cache) if st.kv_cache else "-", gib(run.peak(st)), verdict)
    console.print(mem)
    for st in run.stages:
        for note in st.notes:
            console.print(f"[dim]\\[{st.name}][/dim] {note}")
        if st.warning:
            console.print(f"[bold yellow]{st.warning}[/bold yellow]")


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        args: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
        model_config: Optional[Path] = typer.Option(
            None, "--model-config", help="The model's config.json (default: model.path's, or the published "
                                         "dimensions of the checkpoint its last component names)."),
        gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="Ranks (default: hardware.gpus)."),
        gpu_memory: Optional[float] = typer.Option(
            None, "--gpu-memory", help="GiB per GPU (default: hardware.gpu_memory_gib)."),
        prompt_tokens: int = typer.Option(256, "--prompt-tokens", min=1, help="Text tokens per prompt."),
        video_seconds: float = typer.Option(120.0, "--video-seconds", help="Source video length (s)."),
        frame_size: str = typer.Option("1280x720", "--frame-size", help="Source frame/image size WxH."),
    ) -> None:
        """Dry-run CONFIG: per-stage questions, steps, tokens and per-rank peak memory; nothing heavy is loaded."""
        from rich.console import Console

        from veripo.recipes.plan import PlanAssumptions, plan_run

        cfg = _load(args)
        try:
            width, height = (int(v) for v in frame_size.lower().split("x"))
            if width < 1 or height < 1 or not video_seconds > 0 or (gpu_memory is not None and not gpu_memory > 0):
                raise ValueError
        except ValueError:
            typer.secho(f"error: --frame-size {frame_size!r} must be WxH in pixels, --video-seconds and --gpu-memory "
                        "positive", fg="red", err=True)
            raise typer.Exit(2) from None
        assumptions = PlanAssumptions(prompt_text_tokens=prompt_tokens, video_seconds=video_seconds,
                                      frame_width=width, frame_height=height)
        try:
            run = plan_run(cfg, model_config=model_config, gpus=gpus, gpu_memory_gib=gpu_memory,
                           assumptions=assumptions)
        except (ValueError, KeyError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        print_plan(run, Console(width=200))
