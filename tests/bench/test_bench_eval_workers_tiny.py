"""``bench/bench_eval_workers.py``: one process and one process plus a decode worker evaluate the same videos
to the same predictions, and the table says so."""

from __future__ import annotations

import json

import pytest
from bench_scripts import bench_script

pytestmark = pytest.mark.slow  # about 20 s on the 2-core machine (a spawned worker loads torch)


def test_the_eval_workers_benchmark_times_both_settings_and_compares_predictions(tmp_path, capsys):
    bench = bench_script("bench_eval_workers")
    out = tmp_path / "workers.json"
    assert bench.main(["--items", "8", "--batch-size", "2", "--repeats", "1", "--work", str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [s["processes"] for s in result["settings"]] == [1, 2] and result["items"] == 8
    assert all(s["same_predictions"] and s["wall_s"] > 0 for s in result["settings"])
    assert result["settings"][1]["batches_by_workers"] == 2  # of the 4 batches, the worker took every other one
    assert "same predictions" in capsys.readouterr().out
    assert [s["batch_size"] for s in result["settings"]] == [2, 2]


def test_the_benchmark_compares_batch_sizes_against_the_first(tmp_path):
    bench = bench_script("bench_eval_workers")
    out = tmp_path / "batches.json"
    code = bench.main(["--items", "6", "--batch-size", "2", "3", "--workers", "1", "--repeats", "1",
                       "--work", str(tmp_path), "--json", str(out)])
    settings = json.loads(out.read_text())["settings"]
    assert [(s["batch_size"], s["processes"]) for s in settings] == [(2, 1), (3, 1)]
    assert settings[0]["speedup"] == 1.0 and settings[0]["same_predictions"]
    assert code == (0 if settings[1]["same_predictions"] else 1)  # the exit code says whether every row agreed
