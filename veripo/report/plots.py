"""The report's plots, after the VerIPO paper's Figure 1 (accuracy and response length over training, with
the phases marked; inconsistency rate per phase), plus eval accuracy, verifier pairs, DPO metrics, wall time.

Each plot is a ``PlotSpec`` in ``PLOTS``: ``draw(ax, run)`` draws one run on one axes and returns None, or a
reason why it has no data. One run gives one axes; ``veripo compare`` puts the runs side by side, one axes
each, with a shared y axis. ``OVERLAYS`` draw all compared runs on one axes (``draw(ax, runs)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from veripo.report.run_data import RunData, as_number
from veripo.report.style import (
    SERIES_COLORS,
    draw_phases,
    eval_values,
    format_duration,
    kind_color,
    kind_legend_handles,
    legend_below,
    new_figure,
    no_data,
    plot_series,
    save_figure,
    stage_bars,
    stage_ticks,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

STEP_AXIS = "training step (global optimizer step)"
PAIR_TYPES = ("consistency", "penalty", "reflective")


@dataclass(frozen=True)
class PlotSpec:
    name: str  # the PNG's file stem
    title: str
    draw: Callable[[Axes, RunData], str | None]
    share_y: bool = True  # side by side in a comparison: same y scale


@dataclass(frozen=True)
class OverlaySpec:
    name: str
    title: str
    draw: Callable[[Axes, Sequence[RunData]], str | None]


def _finish_timeline(ax: Axes, run: RunData, ylabel: str) -> None:
    # zoom to the steps that have data (a long SFT stage without rewards would squeeze the RL curves),
    # measured before the phase spans, which cover every stage, widen the data limits
    lo, hi = ax.dataLim.intervalx
    pad = 0.02 * (hi - lo) + 1.0
    draw_phases(ax, run)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(STEP_AXIS)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    legend_below(ax, handles + kind_legend_handles([s.kind for s in run.stages]))


def _eval_markers(ax: Axes, run: RunData, metric: str, label: str, scale: float = 1.0) -> bool:
    """The held-out value after each stage as a square at that stage's last step."""
    xs, ys = [], []
    for stage in run.stages:
        value = as_number(stage.primary_eval.get(metric))
        if value is not None:
            xs.append(run.stage_end_step(stage) + 0.5)
            ys.append(scale * value)
    if xs:
        ax.plot(xs, ys, "s--", color="black", ms=6, lw=0.8, alpha=0.8, label=label)
    return bool(xs)


def draw_accuracy_reward(ax: Axes, run: RunData) -> str | None:
    trained = plot_series(ax, run.stages, "accuracy_mean", "#1f77b4", "accuracy reward (rollouts, moving avg)")
    evaluated = _eval_markers(ax, run, "accuracy", "held-out accuracy after stage")
    if not (trained or evaluated):
        return "no GRPO rows with 'accuracy_mean' and no held-out accuracy in this run"
    ax.set_ylim(-0.02, 1.05)
    _finish_timeline(ax, run, "accuracy (fraction correct, 0-1)")
    return None


def draw_response_length(ax: Axes, run: RunData) -> str | None:
    response = plot_series(ax, run.stages, "response_len", "#d62728", "response length (rollouts, moving avg)")
    thinking = plot_series(ax, run.stages, "thinking_len", "#9467bd", "thinking length (rollouts, moving avg)")
    evaluated = _eval_markers(ax, run, "response_len", "held-out response length after stage")
    if not (response or thinking or evaluated):
        return "no GRPO rows with 'response_len'/'thinking_len' and no held-out response length"
    ax.set_ylim(bottom=0)
    _finish_timeline(ax, run, "mean length (tokens)")
    return None


def _draw_eval_bars(ax: Axes, run: RunData, metric: str, ylabel: str, extra: dict | None = None) -> str | None:
    values = eval_values(run, metric)
    series = [b for b in run.benchmarks if any(k[1] == b for k in values)]
    labels = {b: f"{b} (eval)" for b in series}
    for (index, name), value in (extra or {}).items():
        values[(index, name)] = value
        if name not in series:
            series.append(name)
    if not values:
        return f"no eval '{metric}' after any stage"
    stage_bars(ax, run, values, series, percent=True, series_labels=labels)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    kinds = [s.kind for s in run.stages if any(k[0] == s.index for k in values)]
    legend_below(ax, handles + kind_legend_handles(kinds))
    return None


def draw_inconsistency(ax: Axes, run: RunData) -> str | None:
    verifier = {(s.index, "verifier (training rollouts)"): s.inconsistency_rate
                for s in run.stages if s.inconsistency_rate is not None}
    return _draw_eval_bars(ax, run, "inconsistency_rate", "inconsistency rate (% of responses, lower is better)",
                           verifier)


def draw_eval_accuracy(ax: Axes, run: RunData) -> str | None:
    reason = _draw_eval_bars(ax, run, "accuracy", "eval accuracy (% correct)")
    if reason is None:
        ax.set_ylim(0, 105)
    return reason


def draw_pair_mix(ax: Axes, run: RunData) -> str | None:
    stages = [s for s in run.stages if s.pairs]
    if not stages:
        return "no verifier stage with pair counts (summary.json 'pairs', verify_summary.json or pairs.jsonl)"
    types = list(PAIR_TYPES) + sorted({t for s in stages for t in s.pairs} - set(PAIR_TYPES))
    bottoms = [0] * len(stages)
    for j, kind in enumerate(types):
        counts = [s.pairs.get(kind, 0) for s in stages]
        if not any(counts):
            continue
        bars = ax.bar(range(len(stages)), counts, bottom=bottoms, width=0.6, label=kind,
                      color=SERIES_COLORS[j % len(SERIES_COLORS)])
        ax.bar_label(bars, labels=[str(c) if c else "" for c in counts], label_type="center", fontsize=8,
                     color="white")
        bottoms = [b + c for b, c in zip(bottoms, counts)]
    for slot, total in enumerate(bottoms):
        ax.text(slot, total, f"{total} pairs", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(stages)), [s.name for s in stages], fontsize=8)
    ax.set_xlim(-0.7, len(stages) - 0.3)
    ax.set_ylabel("preference pairs (count)")
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # all-zero stages draw no labelled bars
        ax.legend(title="pair type", fontsize=8)
    return None


def draw_dpo(ax: Axes, run: RunData) -> str | None:
    stages = [s for s in run.stages if s.kind == "dpo" and (s.series("loss")[0] or s.series("margin")[0])]
    if not stages:
        return "no DPO rows with 'loss' or 'margin'"
    margin_ax = ax.twinx()
    for j, stage in enumerate(stages):
        color = SERIES_COLORS[j % len(SERIES_COLORS)]
        steps = [r.get("step") for r in stage.rows]
        use_step = all(as_number(s) is not None for s in steps)
        for key, target, style in (("loss", ax, "-"), ("margin", margin_ax, "--")):
            xs, ys = stage.series(key)
            if use_step:  # step within the stage, so every DPO stage starts at 0
                xs = [as_number(r.get("step")) for r in stage.rows if as_number(r.get(key)) is not None]
            if xs:
                target.plot(xs, ys, style, color=color, lw=1.6, marker="." if len(xs) < 40 else None,
                            label=f"{stage.name}: {key}")
    ax.set_xlabel("optimizer step within the DPO stage")
    ax.set_ylabel("DPO loss (solid)")
    margin_ax.set_ylabel("reward margin chosen - rejected (dashed)")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + margin_ax.get_legend_handles_labels()[0]
    legend_below(ax, handles)
    return None


def draw_wall_time(ax: Axes, run: RunData) -> str | None:
    stages = [s for s in run.stages if s.wall_time_s is not None]
    if not stages:
        return "no stage wall times (summary.json 'wall_time_s' or metrics 'time_s')"
    minutes = max(s.wall_time_s for s in stages) > 600
    scale = 60.0 if minutes else 1.0
    bars = ax.bar(range(len(stages)), [s.wall_time_s / scale for s in stages], width=0.6,
                  color=[kind_color(s.kind) for s in stages])
    ax.bar_label(bars, labels=[format_duration(s.wall_time_s) for s in stages], fontsize=8, padding=1)
    stage_ticks(ax, stages)
    ax.set_ylabel("wall time (min)" if minutes else "wall time (s)")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    legend_below(ax, kind_legend_handles([s.kind for s in stages]))
    return None


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("accuracy_reward", "Accuracy reward over training", draw_accuracy_reward),
    PlotSpec("response_length", "Response and thinking length over training", draw_response_length),
    PlotSpec("inconsistency_rate", "Thinking/answer inconsistency rate after each stage", draw_inconsistency),
    PlotSpec("eval_accuracy", "Eval accuracy after each stage, per benchmark", draw_eval_accuracy),
    PlotSpec("pair_mix", "Preference pairs per type, per verifier stage", draw_pair_mix),
    PlotSpec("dpo_metrics", "DPO loss and reward margin", draw_dpo, share_y=False),
    PlotSpec("wall_time", "Wall time per stage", draw_wall_time),
)


def _heldout_after_stage(run: RunData, metric: str) -> tuple[list[float], list[float], list[str]]:
    xs, ys, names = [], [], []
    for stage in run.stages:
        value = as_number(stage.primary_eval.get(metric))
        if value is not None:
            xs.append(run.stage_end_step(stage))
            ys.append(value)
            names.append(stage.name)
    return xs, ys, names


def overlay_eval(metric: str, ylabel: str, percent: bool) -> Callable[[Axes, Sequence[RunData]], str | None]:
    def draw(ax: Axes, runs: Sequence[RunData]) -> str | None:
        drawn = False
        for j, run in enumerate(runs):
            xs, ys, names = _heldout_after_stage(run, metric)
            if not xs:
                continue
            scale = 100.0 if percent else 1.0
            color = SERIES_COLORS[j % len(SERIES_COLORS)]
            ax.plot(xs, [scale * y for y in ys], "o-", color=color, lw=2, label=run.name)
            for x, y, name in zip(xs, ys, names):
                ax.annotate(name, (x, scale * y), textcoords="offset points", xytext=(3, 5), fontsize=7, color=color)
            drawn = True
        if not drawn:
            return f"no held-out '{metric}' in any run"
        ax.set_xlabel(f"{STEP_AXIS} at the end of the stage")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return None

    return draw


def draw_accuracy_overlay(ax: Axes, runs: Sequence[RunData]) -> str | None:
    drawn = False
    for j, run in enumerate(runs):
        color = SERIES_COLORS[j % len(SERIES_COLORS)]
        drawn |= plot_series(ax, run.stages, "accuracy_mean", color, run.name)
        for stage in run.stages[1:]:  # where each stage of this run begins
            ax.axvline(run.stage_end_step(stage) + 0.5 if stage.step_span is None else stage.step_span[0] - 0.5,
                       color=color, lw=0.8, ls=":", alpha=0.7)
    if not drawn:
        return "no GRPO rows with 'accuracy_mean' in any run"
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel(f"{STEP_AXIS}; dotted lines: stage boundaries in the run's colour")
    ax.set_ylabel("accuracy reward (fraction correct, moving avg)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return None


OVERLAYS: tuple[OverlaySpec, ...] = (
    OverlaySpec("overlay_accuracy_reward", "Accuracy reward over training, runs overlaid", draw_accuracy_overlay),
    OverlaySpec("overlay_heldout_accuracy", "Held-out accuracy after each stage, runs overlaid",
                overlay_eval("accuracy", "held-out accuracy (% correct)", True)),
    OverlaySpec("overlay_inconsistency", "Held-out inconsistency rate after each stage, runs overlaid",
                overlay_eval("inconsistency_rate", "inconsistency rate (% of responses)", True)),
    OverlaySpec("overlay_response_length", "Held-out response length after each stage, runs overlaid",
                overlay_eval("response_len", "mean response length (tokens)", False)),
)


@dataclass(frozen=True)
class RenderedPlot:
    name: str
    title: str
    path: Path | None  # None when no run had data
    note: str | None  # why it is missing, or which runs had no data


def render_plot(spec: PlotSpec, runs: Sequence[RunData], out_dir: Path) -> RenderedPlot:
    """One PNG for ``spec``: one axes per run, side by side. Runs without data show "no data" in their
    axes; when no run has data no PNG is written and the note says why."""
    fig = new_figure(10.0 if len(runs) == 1 else 6.5 * len(runs) + 1.5, 5.0)
    axes = fig.subplots(1, len(runs), sharey=spec.share_y and len(runs) > 1, squeeze=False)[0]
    reasons = []
    for ax, run in zip(axes, runs):
        reason = spec.draw(ax, run)
        if len(runs) > 1:
            ax.set_title(run.name, fontsize=10)
        if reason is not None:
            reasons.append(f"{run.name}: {reason}")
            no_data(ax, reason)
    if len(reasons) == len(runs):
        return RenderedPlot(spec.name, spec.title, None, "; ".join(reasons))
    fig.suptitle(spec.title, fontsize=13, fontweight="bold")
    path = save_figure(fig, out_dir / f"{spec.name}.png")
    return RenderedPlot(spec.name, spec.title, path, "; ".join(reasons) or None)


def render_overlay(spec: OverlaySpec, runs: Sequence[RunData], out_dir: Path) -> RenderedPlot:
    fig = new_figure(10.0, 5.0)
    ax = fig.subplots()
    reason = spec.draw(ax, runs)
    if reason is not None:
        return RenderedPlot(spec.name, spec.title, None, reason)
    fig.suptitle(spec.title, fontsize=13, fontweight="bold")
    return RenderedPlot(spec.name, spec.title, save_figure(fig, out_dir / f"{spec.name}.png"), None)
