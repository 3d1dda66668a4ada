"""Reports of a run directory: Figure-1-style plots, an HTML page and a Markdown summary; comparisons.

``write_report(run_dir)`` is called at the end of every run; ``veripo report`` and ``veripo compare`` wrap it.
"""

from veripo.report.run_data import RunData, StageData, load_run
from veripo.report.writer import write_comparison, write_report

__all__ = ["RunData", "StageData", "load_run", "write_comparison", "write_report"]
