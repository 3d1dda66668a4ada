"""The report page (self-contained HTML: plots embedded as base64 PNG, inline CSS, no scripts, no network)
and its Markdown twin (plots referenced by relative path), from the same sections."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from veripo.report.plots import RenderedPlot
from veripo.report.run_data import RunData
from veripo.report.tables import Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1280px;
       padding: 0 16px; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 9px; text-align: right; }
th { background: #f2f4f7; } td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { color: #555; font-size: 0.9em; }
.nodata { color: #8a6d3b; background: #fcf8e3; border: 1px solid #faebcc; padding: 8px 12px; }
details { margin: 0.6em 0; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.85em; }
ul.notes li { color: #8a6d3b; }
"""


@dataclass
class Page:
    """What a report page shows, in order. ``configs`` maps a run name to its config.yaml text."""

    title: str
    meta: list[str]
    tables: list[Table]
    plots: list[RenderedPlot]
    configs: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wide: bool = False  # comparisons: side-by-side panels need the width


def page_notes(runs: Sequence[RunData], prefix_run: bool) -> list[str]:
    return [f"{run.name}: {note}" if prefix_run else note for run in runs for note in run.notes]


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    if not table.rows:
        body = f'<tr><td colspan="{len(table.headers)}">no data</td></tr>'
    return f"<h3>{html.escape(table.title)}</h3>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_plot(plot: RenderedPlot) -> str:
    title = html.escape(plot.title)
    if plot.path is None:
        return f'<div class="nodata" id="plot-{plot.name}"><b>{title}</b>: no data ({html.escape(plot.note or "")})</div>'
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    note = f" · partly missing: {html.escape(plot.note)}" if plot.note else ""
    return (f'<figure id="plot-{plot.name}"><img src="data:image/png;base64,{data}" alt="{title}" '
            f'data-file="{plot.path.name}"><figcaption>{title} · <a href="{plot.path.name}">{plot.path.name}</a>'
            f"{note}</figcaption></figure>")


def render_html(page: Page) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(page.title)}</title><style>{CSS}</style></head>",
        '<body style="max-width: 1800px">' if page.wide else "<body>",
        f"<h1>{html.escape(page.title)}</h1>",
        *[f'<p class="meta">{html.escape(line)}</p>' for line in page.meta],
        *([f'<p class="nodata">{len(page.notes)} note(s) about missing or malformed data: see <a href="#notes">Notes</a>.</p>']
          if page.notes else []),
        "<h2>Key numbers</h2>", *[_html_table(t) for t in page.tables],
        "<h2>Plots</h2>", *[_html_plot(p) for p in page.plots],
        "<h2>Config</h2>",
    ]
    for name, text in page.configs.items():
        body = html.escape(text) if text is not None else "config.yaml not found"
        parts.append(f"<details><summary>config.yaml of {html.escape(name)}</summary><pre>{body}</pre></details>")
    if page.notes:
        parts.append('<h2 id="notes">Notes</h2><ul class="notes">')
        parts += [f"<li>{html.escape(n)}</li>" for n in page.notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if not table.rows:
        lines.append("| no data |" + " |" * (len(table.headers) - 1))
    return "\n".join(lines) + "\n"


def render_markdown(page: Page) -> str:
    parts = [f"# {page.title}", "", *[f"{line}  " for line in page.meta], ""]
    if page.notes:
        parts += [f"**{len(page.notes)} note(s) about missing or malformed data: see [Notes](#notes).**", ""]
    parts += ["## Key numbers", ""]
    parts += [_md_table(t) for t in page.tables]
    parts += ["## Plots", ""]
    for plot in page.plots:
        if plot.path is None:
            parts.append(f"- **{plot.title}**: no data ({plot.note})")
        else:
            parts.append(f"![{plot.title}]({plot.path.name})")
            if plot.note:
                parts.append(f"\n_partly missing: {plot.note}_")
        parts.append("")
    parts += ["## Config", ""]
    for name, text in page.configs.items():
        body = text.rstrip() if text is not None else "# config.yaml not found"
        parts += [f"<details><summary>config.yaml of {name}</summary>", "", "```yaml", body, "```", "", "</details>", ""]
    if page.notes:
        parts += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in page.notes] + [""]
    return "\n".join(parts)
