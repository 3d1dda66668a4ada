"""verify_rollouts: a rollouts file in, verdicts/pairs/summary out; groups per batch; unknown samples counted."""

from __future__ import annotations

import json

from veripo.config import VerifierConfig
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.records import Pair, Rollout, Sample, Verdict
from veripo.verifier.run import inconsistency_rate, verify_rollouts

SAMPLE = Sample(id="n", problem="How many circles?", problem_type="numerical", answer="3")
GOOD = "<think>One, two, three circles. Therefore 3.</think><answer>3</answer>"
CONTRADICTS = "<think>One, two, three circles. Therefore 3.</think><answer>4</answer>"


def test_groups_are_per_batch_and_unknown_samples_counted(tmp_path):
    rollouts = [Rollout(id=f"n/s/{step}/{i}", sample_id="n", group_index=i, text=text, stage="s", step=step)
                for step, texts in ((0, (GOOD, CONTRADICTS)), (1, (GOOD, GOOD)))
                for i, text in enumerate(texts)]
    rollouts.append(Rollout(id="other/s/0/0", sample_id="other", group_index=0, text=GOOD, stage="s"))
    path = tmp_path / "rollouts.jsonl"
    with JsonlWriter(path) as w:
        w.write_many(rollouts)
    summary = verify_rollouts(path, {"n": SAMPLE}, VerifierConfig(), tmp_path / "out")
    data = json.loads((tmp_path / "out" / "verify_summary.json").read_text())
    assert data["missing_samples"] == 1 and data["checked"] == 4 and data["rollouts"] == 5
    assert data["skipped_groups"] == {"no_bad": 1}  # step 1's group is all good; step 0 gives a pair
    [pair] = read_jsonl(tmp_path / "out" / "pairs.jsonl", Pair)
    assert (pair.pair_type, pair.chosen_rollout, pair.rejected_rollout) == ("consistency", "n/s/0/0", "n/s/0/1")
    verdicts = read_jsonl(tmp_path / "out" / "verdicts.jsonl", Verdict)
    assert [v.consistency for v in verdicts] == ["consistent", "inconsistent", "consistent", "consistent"]
    assert inconsistency_rate(verdicts) == summary.inconsistency_rate == 1 / 4
    assert data["failed_checks"]["consistency"] == 1 and data["failed_checks"]["accuracy"] == 1


def test_inconsistency_rate_leaves_unknown_out():
    def verdict(label):
        return Verdict(rollout_id=label, sample_id="n", format_ok=True, accuracy=1.0, correct=True,
                       thinking_tokens=3, repetitive=False, truncated=False, consistency=label)

    assert inconsistency_rate([verdict("unknown")] * 3) is None
    assert inconsistency_rate([verdict("inconsistent"), verdict("unknown"), verdict("consistent")]) == 0.5
