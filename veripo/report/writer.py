"""``write_report(run_dir)``: plots, ``index.html`` and ``summary.md`` in ``run_dir/report``;
``write_comparison(run_dirs, out_dir)``: the same with the runs side by side plus overlays."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from veripo.report.pages import Page, page_notes, render_html, render_markdown
from veripo.report.plots import (
    OVERLAYS,
    PLOTS,
    RenderedPlot,
    render_overlay,
    render_plot,
)
from veripo.report.run_data import RunData, load_run
from veripo.report.tables import (
    benchmark_table,
    pairs_table,
    problem_type_table,
    run_table,
    sampling_table,
    stage_table,
    task_table,
)


def _write_pages(page: Page, out_dir: Path) -> Path:
    (out_dir / "summary.md").write_text(render_markdown(page), encoding="utf-8")
    index = out_dir / "index.html"
    index.write_text(render_html(page), encoding="utf-8")
    return index


def _render_all(runs: Sequence[RunData], out_dir: Path, overlays: bool) -> list[RenderedPlot]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [render_plot(spec, runs, out_dir) for spec in PLOTS]
    if overlays:
        plots = [render_overlay(spec, runs, out_dir) for spec in OVERLAYS] + plots
    for plot in plots:  # a plot that has no data now must not leave last report's PNG behind
        if plot.path is None:
            (out_dir / f"{plot.name}.png").unlink(missing_ok=True)
    return plots


def _state_line(run: RunData) -> str:
    completed = run.state.get("completed")
    current = run.state.get("current")
    done = f"{len(completed)} stage(s) completed" if isinstance(completed, list) else "state.json: not found"
    return f"{done}; current: {current}" if current else done


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/{index.html, summary.md, *.png}`` and return the path of ``index.html``.

    Never fails on missing or malformed run files (they become notes in the report); raises
    ``FileNotFoundError`` only when ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist or is not a directory")
    run = load_run(root)
    out_dir = root / "report"
    plots = _render_all([run], out_dir, overlays=False)
    page = Page(
        title=f"VerIPO run report: {run.name}",
        meta=[f"run directory: {root.resolve()}",
              f"{len(run.stages)} stage(s), {run.steps_logged} logged optimizer step(s); {_state_line(run)}"],
        tables=[t for t in (stage_table(run), benchmark_table(run), problem_type_table(run), task_table(run),
                            pairs_table(run), sampling_table(run), run_table([run])) if t is not None],
        plots=plots,
        configs={run.name: run.config_text},
        notes=page_notes([run], prefix_run=False) + [f"plot {p.name}: {p.note}" for p in plots if p.note],
    )
    return _write_pages(page, out_dir)


def default_compare_dir(run_dirs: Sequence[str | Path]) -> Path:
    """``<parent of the first run>/compare-<run>-vs-<run>...`` (names shortened to keep the path sane)."""
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(r).resolve().name)[:40] for r in run_dirs]
    return Path(run_dirs[0]).resolve().parent / ("compare-" + "-vs-".join(names))[:200]


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Compare runs (e.g. VerIPO vs GRPO-only): every report plot with the runs side by side, overlays of
    accuracy reward and held-out metrics, key numbers per run; returns the path of ``index.html``."""
    if len(run_dirs) < 1:
        raise ValueError("compare needs at least one run directory")
    missing = [str(r) for r in run_dirs if not Path(r).is_dir()]
    if missing:
        raise FileNotFoundError(f"run director{'ies' if len(missing) > 1 else 'y'} not found: {', '.join(missing)}")
    runs = [load_run(r) for r in run_dirs]
    names = [run.name for run in runs]
    for i, run in enumerate(runs):  # two runs of the same name would be indistinguishable in legends
        if names.count(run.name) > 1:
            run.name = f"{run.name} [{i + 1}]"
    out = Path(out_dir) if out_dir is not None else default_compare_dir(run_dirs)
    plots = _render_all(runs, out, overlays=True)
    tables = [run_table(runs)]
    for run in runs:
        table = stage_table(run)
        tables.append(type(table)(f"{run.name}: {table.title[0].lower()}{table.title[1:]}", table.headers, table.rows))
    page = Page(
        title="VerIPO run comparison: " + " vs ".join(run.name for run in runs),
        meta=[f"{run.name}: {Path(d).resolve()} ({len(run.stages)} stage(s), {run.steps_logged} logged steps)"
              for run, d in zip(runs, run_dirs)],
        tables=tables,
        plots=plots,
        configs={run.name: run.config_text for run in runs},
        notes=page_notes(runs, prefix_run=True) + [f"plot {p.name}: {p.note}" for p in plots if p.note],
        wide=True,
    )
    return _write_pages(page, out)
