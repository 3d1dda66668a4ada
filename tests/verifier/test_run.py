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


def test_outputs_and_a_second_run_hits_the_judge_cache(tmp_path, monkeypatch):
    from veripo.verifier.judges import RuleJudge

    asked: list[int] = []
    original = RuleJudge.judge

    def counting(self, items):
        asked.append(len(items))
        return original(self, items)

    monkeypatch.setattr(RuleJudge, "judge", counting)
    texts = [GOOD, CONTRADICTS, GOOD.replace("Therefore 3.", "Therefore 4."),  # says 4, answers 3: inconsistent
             "<think>Some circles.</think><answer>3</answer>",  # no conclusion: unknown
             "<think>One, two, three circles. Therefore 3."]  # cut off: no answer, the judge is not asked
    rollouts = [Rollout(id=f"n/0/{i}", sample_id="n", group_index=i, text=t) for i, t in enumerate(texts)]
    out = tmp_path / "out"
    first = verify_rollouts(rollouts, {"n": SAMPLE}, VerifierConfig(), out)
    assert sum(asked) == 4  # the truncated rollout has no answer: not asked
    assert dict(first.consistency) == {"consistent": 1, "inconsistent": 2, "unknown": 2}
    assert first.inconsistency_rate == 2 / 3  # unknowns left out
    data = json.loads((out / "verify_summary.json").read_text())
    assert data["inconsistency_rate"] == 2 / 3 and data["inconsistency_rate_all"] == 2 / 5
    assert data["judge_skipped"] == 1 and data["judge_counters"]["cache_hits"] == 0
    verdicts = read_jsonl(out / "verdicts.jsonl", Verdict)
    assert len(verdicts) == 5 and (out / "pairs.jsonl").exists()
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 4

    second = verify_rollouts(rollouts, {"n": SAMPLE}, VerifierConfig(), out)
    assert sum(asked) == 4  # nothing asked anew
    assert second.judge_counters["cache_hits"] == 4 and dict(second.consistency) == dict(first.consistency)
    assert [v.consistency for v in read_jsonl(out / "verdicts.jsonl", Verdict)] == [v.consistency for v in verdicts]
