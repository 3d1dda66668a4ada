"""Shared drawing pieces of the report plots: colours per stage kind, phase spans, smoothing, bars.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never through pyplot, so
reporting sets no global backend or state and works in threads and on headless machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from veripo.report.run_data import RunData, StageData, as_number

if TYPE_CHECKING:  # matplotlib is imported lazily: `veripo --help` stays fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KIND_COLORS = {
    "sft": "#8c8c8c",
    "grpo": "#1f77b4",
    "verify": "#2ca02c",
    "dpo": "#ff7f0e",
    "eval": "#9467bd",
    "unknown": "#bcbd22",
}
KIND_TITLES = {"sft": "SFT", "grpo": "GRPO", "verify": "verifier", "dpo": "DPO", "eval": "eval", "unknown": "?"}
SERIES_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
DPI = 110


def kind_color(kind: str) -> str:
    return KIND_COLORS.get(kind, KIND_COLORS["unknown"])


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (shorter at the start), same length as ``values``."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(n: int) -> int:
    return max(1, min(25, n // 15))


def draw_phases(ax: Axes, run: RunData) -> None:
    """Shade each stage's steps in its kind's colour, draw a line where a step-less stage (verify) ran, and
    name the stages on a top axis so boundaries read without a legend lookup."""
    ticks, labels = [], []
    for stage in run.stages:
        span = stage.step_span
        color = kind_color(stage.kind)
        if span is not None:
            lo, hi = span[0] - 0.5, span[1] + 0.5
            ax.axvspan(lo, hi, color=color, alpha=0.10, lw=0)
            ax.axvline(lo, color=color, lw=0.8, alpha=0.6)
            ticks.append((lo + hi) / 2)
        else:
            x = run.stage_end_step(stage) + 0.5
            ax.axvline(x, color=color, lw=1.6, ls="--", alpha=0.9)
            ticks.append(x)
        labels.append(f"{stage.name} ({KIND_TITLES.get(stage.kind, stage.kind)})")
    if ticks:
        top = ax.secondary_xaxis("top")
        crowded = len(ticks) > 8  # an iterated loop: steeper labels overlap less
        top.set_xticks(ticks, labels, rotation=55 if crowded else 25, ha="left", fontsize=7 if crowded else 7.5)
        top.tick_params(length=0)


def legend_below(ax: Axes, handles: list, ncol: int = 4) -> None:
    """The legend under the axes (and under slanted tick labels), so it never hides data or bar labels."""
    slanted = any(label.get_rotation() for label in ax.get_xticklabels())
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3 if slanted else -0.14),
              ncol=ncol, frameon=False)


def kind_legend_handles(kinds: Sequence[str]) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=kind_color(k), alpha=0.35, label=f"{KIND_TITLES.get(k, k)} stage") for k in dict.fromkeys(kinds)]


def plot_series(ax: Axes, stages: Sequence[StageData], key: str, color: str, label: str) -> bool:
    """Raw per-step values faintly and their moving average boldly, each stage a separate segment (a new
    stage is a new policy or objective, so joining them would draw a slope that never happened)."""
    drawn = False
    for stage in stages:
        xs, ys = stage.series(key)
        if not xs:
            continue
        window = smoothing_window(len(ys))
        ax.plot(xs, ys, color=color, lw=0.8, alpha=0.3)
        ax.plot(xs, moving_average(ys, window), color=color, lw=2.0, label=None if drawn else label)
        drawn = True
    return drawn


def no_data(ax: Axes, reason: str) -> None:
    ax.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", fontsize=10, color="#666666",
            transform=ax.transAxes, wrap=True)
    # tick_params, not set_yticks: a y axis shared with another run's panel must keep its ticks there
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def stage_bars(ax: Axes, run: RunData, values: dict[tuple[int, str], float], series: Sequence[str],
               percent: bool, series_labels: dict[str, str] | None = None) -> None:
    """Grouped bars: one slot per stage that has a value (background in the stage kind's colour), one bar
    per series (benchmark) in the slot, the value written on top."""
    stages = [s for s in run.stages if any((s.index, name) in values for name in series)]
    width = 0.8 / max((sum((s.index, name) in values for name in series) for s in stages), default=1)
    positions: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in series}
    for slot, stage in enumerate(stages):
        ax.axvspan(slot - 0.45, slot + 0.45, color=kind_color(stage.kind), alpha=0.12, lw=0)
        present = [name for name in series if (stage.index, name) in values]
        for j, name in enumerate(present):  # the bars a stage has, centred in its slot
            positions[name][0].append(slot + width * (j - (len(present) - 1) / 2))
            positions[name][1].append(100 * values[(stage.index, name)] if percent else values[(stage.index, name)])
    for j, name in enumerate(series):
        xs, ys = positions[name]
        hatch = "//" if name.startswith("verifier") else None
        bars = ax.bar(xs, ys, width=width * 0.92, color=SERIES_COLORS[j % len(SERIES_COLORS)], hatch=hatch,
                      edgecolor="white", label=(series_labels or {}).get(name, name))
        ax.bar_label(bars, fmt="%.1f" if percent else "%.3g", fontsize=7, padding=1)
    stage_ticks(ax, stages)
    ax.set_xlim(-0.6, len(stages) - 0.4)
    ax.margins(y=0.15)


def stage_ticks(ax: Axes, stages: Sequence[StageData]) -> None:
    """One x tick per stage slot: name and kind; slanted when there are many, so neighbours do not overlap."""
    labels = [f"{s.name}\n({KIND_TITLES.get(s.kind, s.kind)})" for s in stages]
    if len(stages) > 8:
        ax.set_xticks(range(len(stages)), [label.replace("\n", " ") for label in labels], fontsize=7.5,
                      rotation=30, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(range(len(stages)), labels, fontsize=8)


def eval_values(run: RunData, metric: str) -> dict[tuple[int, str], float]:
    """(stage index, benchmark) -> the metric after that stage, for every finite value."""
    out = {}
    for stage in run.stages:
        for bench, metrics in stage.eval.items():
            value = as_number(metrics.get(metric))
            if value is not None:
                out[(stage.index, bench)] = value
    return out


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
