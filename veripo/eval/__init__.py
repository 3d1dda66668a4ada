"""Evaluation: run a policy on benchmarks (greedy, batched, resumable) and compute their metrics.

- ``evaluate``: one benchmark -> ``predictions.jsonl``, ``metrics.json`` and the peers' formats.
- ``compute_metrics``: metrics of prediction rows (accuracy per type, MRA, peer scores, lengths, consistency).
- ``settings_for`` / ``BENCHMARKS``: frames, pixels and numeric scoring per benchmark (VerIPO defaults).
See docs/evaluation.md.
"""

from veripo.eval.benchmarks import (
    BENCHMARKS,
    BenchmarkSettings,
    assign_numeric_types,
    benchmark_name,
    settings_for,
)
from veripo.eval.metrics import compute_metrics
from veripo.eval.predictions import read_predictions, write_peer_exports
from veripo.eval.runner import evaluate, greedy_params

__all__ = [
    "BENCHMARKS", "BenchmarkSettings", "assign_numeric_types", "benchmark_name", "compute_metrics", "evaluate",
    "greedy_params", "read_predictions", "settings_for", "write_peer_exports",
]
