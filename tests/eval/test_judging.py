"""The inconsistency rate through the verifier's rule judge: labels stored per prediction, rate in metrics."""

from __future__ import annotations

import pytest
from scripted import ScriptedEngine, WordTokenizer, encode_id

from veripo.config import VerifierConfig
from veripo.data.records import Sample
from veripo.eval import evaluate, read_predictions

judges = pytest.importorskip("veripo.verifier.judges")

RESPONSES = {
    "s0": "<think>I count the squares one by one. So the answer is 3.</think><answer>3</answer>",
    "s1": "<think>I count them again. The total is 5.</think><answer>3</answer>",  # says 5, answers 3
    "s2": "<think>Two and two more make 4.</think><answer>4</answer>",
    "s3": "<think>No idea at all.</think><answer>7</answer>",  # states no conclusion: unknown
}


def test_inconsistency_rate_from_rule_judge(tmp_path):
    samples = [Sample(id=i, problem="How many squares?", problem_type="numerical", answer="3") for i in RESPONSES]
    judge = judges.make_eval_judge("rule", VerifierConfig(), tmp_path)
    metrics = evaluate(None, WordTokenizer(), encode_id, samples, out_dir=tmp_path / "out", benchmark="toy",
                       engine=ScriptedEngine(RESPONSES), judge=judge, judge_name="rule", show_progress=False)
    rows = read_predictions(tmp_path / "out" / "predictions.jsonl")
    assert [rows[i]["consistency"] for i in RESPONSES] == ["consistent", "inconsistent", "consistent", "unknown"]
    assert metrics["inconsistency_rate"] == pytest.approx(1 / 3)
    assert metrics["n_judged"] == 3 and metrics["judge"] == "rule"


def test_rate_matches_the_verifiers_definition():
    from veripo.data.records import Verdict
    from veripo.eval.metrics import inconsistency_rate_of
    from veripo.verifier.run import inconsistency_rate

    labels = ["consistent", "inconsistent", "unknown", "inconsistent", "consistent", "consistent"]
    verdicts = [Verdict(rollout_id=str(i), sample_id="s", format_ok=True, accuracy=1.0, correct=True,
                        thinking_tokens=1, repetitive=False, truncated=False, consistency=label)
                for i, label in enumerate(labels)]
    assert inconsistency_rate_of(labels)[0] == inconsistency_rate(verdicts) == pytest.approx(2 / 5)
