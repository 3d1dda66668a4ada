"""Ranks balanced by token count (``distributed.balance_tokens``) train to the same weights as the by-question
split: two CPU processes over gloo run a GRPO and a DPO stage on questions of very different prompt lengths (text,
image, video) twice, split by tokens and by question (item i on rank i % 2), and the final weights and logged
losses must match as the data-parallel test's one- and two-process runs do (1e-5: the per-question gradients
are summed in another order, nothing more). The logged ``rank_imbalance`` must be below the by-question split's
in some step (the split differs), or the two runs would have split the work alike and the match would prove
nothing. (One video prompt outweighs several text ones, so no split gets far below the largest item's share.)

A third run splits by tokens with the decoder layers sharded (FSDP2), where every forward is a collective: a
rank given fewer groups by the balanced split must still make the other ranks' collective calls (the lockstep
pads its calls with idle ones), or the run hangs or fails; it must match too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_data_parallel_on_cpu import COMMON, TORCHRUN, WORKER, _env, assert_same_final_weights
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.records import Pair, reference_completion
from veripo.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow

CONFIG = "name: balance\n" + COMMON + """\
grpo: {{lr: 1.0e-4, rollout_batch_size: 6, global_batch_size: 12, max_steps: 2}}
dpo: {{lr: 1.0e-4, global_batch_size: 3, epochs: 1, beta: 0.1}}
stages:
  - {{name: grpo, kind: grpo}}
  - {{name: dpo, kind: dpo}}
distributed: {{balance_tokens: {balance}, shard_weights: {fsdp}}}
"""
RUNS = {"by-question": (False, False), "balanced": (True, False), "balanced-fsdp": (True, True)}
STAGES = ("00-grpo", "01-dpo")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("balance")
    # kinds in this order: a video question next to text ones, so question i % 2 gives one rank the videos
    data = make_synthetic(root / "data", n=6, seed=11, kinds=("video", "text", "video", "text", "image", "text"),
                          size=56, frames=(4, 4))
    pairs = root / "pairs.jsonl"
    samples = load_samples(data).samples
    with JsonlWriter(pairs) as w:
        for s, other in zip(samples, samples[1:] + samples[:1]):
            w.write(Pair(id=f"{s.id}/p", sample_id=s.id, pair_type="consistency", chosen=reference_completion(s),
                         rejected=reference_completion(other), reasons=["test"]))
    launched = {}
    for name, (balance, fsdp) in RUNS.items():
        config = root / f"{name}.yaml"
        config.write_text(CONFIG.format(out=root / name, data=data, cache=root / "media-cache",
                                        balance=str(balance).lower(), fsdp=str(fsdp).lower()))
        result = root / f"{name}.result"
        cmd = [*TORCHRUN, "--nproc_per_node", "2", str(WORKER), "run", str(config), str(pairs), str(result)]
        with open(root / f"{name}.log", "w") as log:
            launched[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=root),
                              result)
    out = {}
    try:
        for name, (proc, result) in launched.items():
            rc = proc.wait(timeout=600)
            assert rc == 0, f"{name} run failed (exit {rc}):\n{(root / f'{name}.log').read_text()[-4000:]}"
            out[name] = Path(result.read_text())
    finally:
        for proc, _ in launched.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_the_balanced_split_logs_a_smaller_imbalance_than_the_by_question_one(runs, stage):
    rows = read_jsonl(runs["balanced"] / "stages" / stage / "metrics.jsonl")
    assert rows and all(1.0 <= r["rank_imbalance"] <= r["rank_imbalance_by_question"] + 1e-12 for r in rows)
    assert any(r["rank_imbalance"] < r["rank_imbalance_by_question"] - 1e-3 for r in rows), rows
    by_question = read_jsonl(runs["by-question"] / "stages" / stage / "metrics.jsonl")
    assert [r["rank_imbalance"] for r in by_question] == [r["rank_imbalance_by_question"] for r in by_question]


@pytest.mark.parametrize("run", ["balanced", "balanced-fsdp"])
@pytest.mark.parametrize("stage", STAGES)
def test_balanced_ranks_reach_the_by_question_weights(runs, stage, run):
    expected = assert_same_final_weights(runs["by-question"] / "stages" / stage, runs[run] / "stages" / stage)
    one, two = (read_jsonl(runs[r] / "stages" / stage / "metrics.jsonl") for r in ("by-question", run))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    if stage == STAGES[0]:
        base = {k: v for f in sorted((runs[run] / "base-model").glob("*.safetensors")) for k, v in load_file(f).items()}
        moved = max(float((tensor - base[name]).abs().max()) for name, tensor in expected.items())
        assert moved > 1e-4, f"GRPO moved no weight by more than {moved:.2g}: a 1e-5 match proves nothing"
