"""``bench/bench_loop.py --tiny``: the whole-loop benchmark runs end to end in seconds, times every phase of every
setting, and its cache-on setting is served from the visual feature cache while its cache-off one is not."""

from __future__ import annotations

import json

import pytest
from bench_scripts import bench_script

pytestmark = pytest.mark.slow  # about 16 s on the shared 2-core machine (one torch thread)


def test_tiny_loop_times_every_phase_with_the_cache_off_and_on(tmp_path, capsys):
    bench = bench_script("bench_loop")
    out = tmp_path / "loop.json"
    assert bench.main(["--tiny", "--budget", "256", "--work", str(tmp_path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    if not bench.has_budget_key():
        assert f"no grpo.{bench.BUDGET_KEY}" in printed
    off, on = result["settings"][:2]
    assert (off["label"], on["label"]) == ("cache off", "cache on")
    for setting in result["settings"]:
        for phase in ("eval before", "GRPO", "GRPO/rollout", "GRPO/update", "verify", "eval after DPO"):
            assert setting["wall_s"][phase] > 0, (setting["label"], phase)
        assert setting["tokens"]["GRPO/rollout"] > 0 and setting["grpo_steps"] == bench.TINY.rollout_batches
        assert len(setting["evals"]) == 3
    assert off["cache_hits"] is None and on["cache_hits"] > 0
    assert "visual feature cache, video GRPO phase with a frozen tower:" in printed
