"""``veripo demo``: the whole VerIPO loop on synthetic video tasks with the tiny model, on a CPU.

Runs ``configs/demo.yaml`` (overrides allowed), prints the held-out numbers per stage and the report path.
``--family qwen3-vl`` (or ``qwen3.5``) runs the same loop with that family's tiny model.
``--compare`` then runs GRPO alone from the same warm start for the same wall time as VerIPO's stages after
the warm start, and writes a side-by-side comparison (the paper's claim: VerIPO is faster and better).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from veripo.recipes.baselines import grpo_only_config

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
RECIPES = DEMO_CONFIG.parent / "recipes"  # one config per published method (docs/algorithms.md)


DEMO_SIDE = 56  # the demo's synthetic frames and images are 56 px (configs/demo.yaml: size: 56)


def family_overrides(name: str) -> list[str]:
    """Overrides that run the demo with ``name``'s tiny model: ``model.family``, a run name of its own, and a
    per-frame pixel budget that keeps the 56 px frames whole at the family's resize factor (patch 16 x merge 2
    = 32: 64 x 64 frames, where the demo's 56 x 56 budget would shrink them to 32 x 32). Raises ValueError
    for an unknown family."""
    import math

    from veripo.models.families import family_named

    family = family_named(name)
    factor = family.patch_size * 2
    side = math.ceil(DEMO_SIDE / factor) * factor
    overrides = [f"model.family={name}"]
    if family.name != "qwen2.5-vl":
        overrides += [f"name=demo-{name}", f"media.max_pixels={side * side}"]
    return overrides


def summary_table(run_dir: Path, title: str):
    from rich.table import Table

    summary = json.loads((run_dir / "summary.json").read_text())
    table = Table(title=title, caption="pairs: consistency/reflective/penalty; inconsistency: held-out after a "
                  "training stage, the judged rollouts at a verify stage; resampled: questions/rounds dynamic "
                  "sampling added")
    resampling = any(st.get("questions_resampled") for st in summary["stages"])
    columns = ("stage", "kind", "accuracy", "tokens", "inconsist.", "pairs", *(("resampled",) if resampling else ()),
               "wall s")
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "kind") else "right", no_wrap=True)
    for st in summary["stages"]:
        ev = next(iter(st.get("eval", {}).values()), {})
        fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        inconsistency = ev.get("inconsistency_rate", st.get("inconsistency_rate"))
        counts = st.get("pairs") if isinstance(st.get("pairs"), dict) else None
        pairs = "/".join(str(counts.get(k, 0)) for k in ("consistency", "reflective", "penalty")) if counts else ""
        # DAPO's dynamic sampling: questions resampled / extra rounds
        resampled = ([f"{st['questions_resampled']}/{st.get('resample_rounds', 0)}" if "questions_resampled" in st
                      else ""] if resampling else [])
        table.add_row(st["name"], st["kind"], fmt(ev.get("accuracy")), fmt(ev.get("response_len"), 1), fmt(inconsistency),
                      pairs, *resampled, fmt(st.get("wall_time_s"), 0))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        args: Optional[list[str]] = typer.Argument(None, help="dotted key=value overrides of configs/demo.yaml"),
        compare: bool = typer.Option(False, "--compare", help="Also run GRPO alone for the same wall time and "
                                     "write a side-by-side comparison."),
        config: Path = typer.Option(DEMO_CONFIG, "--config", help="The demo config."),
        recipe: Optional[str] = typer.Option(None, "--recipe", help="Run configs/recipes/RECIPE.yaml instead (dapo, "
                                             "gspo, cispo, dr-grpo, grpo-only, video-r1, veripo, veripo-dapo)."),
        family: str = typer.Option("qwen2.5-vl", "--family", help="The tiny model's family: qwen2.5-vl, "
                                   "qwen3-vl or qwen3.5."),
    ) -> None:
        """The VerIPO loop on synthetic video tasks with the tiny model, on CPU (6-12 minutes on 2 cores)."""
        from rich.console import Console

        from veripo.cli.train import _load, run_config

        console = Console()
        if recipe is not None:
            known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
            if recipe not in known:
                typer.secho(f"error: --recipe {recipe!r} is not one of {', '.join(known) or '(none found)'}", fg="red",
                            err=True)
                raise typer.Exit(2)
            config = RECIPES / f"{recipe}.yaml"
        if not config.exists():
            typer.secho(f"error: demo config {config} not found (run from a source checkout, or pass --config)", fg="red", err=True)
            raise typer.Exit(2)
        try:
            chosen = family_overrides(family)
        except ValueError as e:
            typer.secho(f"error: --family: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        cfg = _load([str(config), *chosen, *(args or [])])
        root = run_config(cfg, None)
        console.print(summary_table(root, f"VerIPO demo ({cfg.model.family}): {root}"))
        console.print(f"report: {root / 'report' / 'index.html'}")
        if compare:
            from veripo.report.writer import write_comparison

            grpo_root = run_config(grpo_only_config(cfg, root), None)
            console.print(summary_table(grpo_root, f"GRPO only, same wall time: {grpo_root}"))
            out = write_comparison([root, grpo_root])
            console.print(f"comparison: {out}")
