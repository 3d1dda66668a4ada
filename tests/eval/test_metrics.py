"""compute_metrics on a small hand-made predictions set: every number worked out by hand."""

from __future__ import annotations

import pytest

from veripo.data.records import Sample
from veripo.eval.metrics import compute_metrics, inconsistency_rate_of


def _scores(veripo: float, videor1: float) -> dict[str, dict[str, float]]:
    return {"veripo-eval": {"accuracy": veripo, "format": 1.0, "total": veripo},
            "videor1-eval": {"accuracy": videor1, "format": 0.0, "total": videor1}}


def _row(ident: str, kind: str, answer: str, output: str, scores: dict, *, tokens: int, thinking: int,
         format_ok: bool = True, finish: str = "stop", consistency: str | None = None) -> dict:
    sample = Sample(id=ident, problem="q", problem_type=kind, answer=answer,
                    options=["A. x", "B. y"] if kind == "multiple choice" else [])
    row = {"id": ident, "status": "ok", "sample": sample.to_dict(), "output": output, "scores": scores,
           "response_tokens": tokens, "thinking_tokens": thinking, "format_ok": format_ok, "finish_reason": finish}
    if consistency is not None:
        row["consistency"] = consistency
    return row


@pytest.fixture
def rows() -> list[dict]:
    return [
        _row("q1", "multiple choice", "A", "<think>a</think><answer>A</answer>", _scores(1.0, 1.0), tokens=10,
             thinking=4, consistency="consistent"),
        # The two scorers disagree here (e.g. "$A$": VerIPO finds the letter, Video-R1 wants exactly "A").
        _row("q2", "multiple choice", "B", "<think>b</think><answer>$A$</answer>", _scores(0.0, 1.0), tokens=20,
             thinking=6, format_ok=False, finish="length", consistency="inconsistent"),
        # Regression, gold 10, answer 7.7: relative error 0.23 <= 1 - t for t = 0.50..0.75 -> MRA 6/10.
        _row("q3", "regression", "10", "<think>c</think><answer>7.7</answer>", _scores(0.6, 0.6), tokens=30,
             thinking=2, consistency="unknown"),
        {"id": "q4", "status": "missing_media", "reason": "/x/q4.mp4: video file not found",
         "sample": Sample(id="q4", problem="q", problem_type="multiple choice", answer="A").to_dict()},
    ]


def test_metrics_by_hand(rows):
    m = compute_metrics(rows, benchmark="toy", profile="veripo-eval")
    assert (m["n"], m["n_total"], m["n_missing_media"]) == (3, 4, 1)
    assert m["missing_media"] == [{"id": "q4", "reason": "/x/q4.mp4: video file not found"}]
    assert m["accuracy"] == pytest.approx(1.6 / 3)
    assert m["accuracy_all_items"] == pytest.approx(1.6 / 4)
    assert m["by_type"] == pytest.approx({"multiple choice": 0.5, "regression": 0.6})
    assert m["n_by_type"] == {"multiple choice": 2, "regression": 1}
    assert m["mra"] == pytest.approx(0.6) and m["n_mra"] == 1
    assert m["profiles"]["videor1-eval"]["accuracy"] == pytest.approx(2.6 / 3)
    assert m["profiles"]["veripo-eval"]["format"] == pytest.approx(1.0)
    # Video-R1 splits regression off into mean_mra; VerIPO averages every item.
    assert m["peer_scores"]["videor1-eval"] == pytest.approx({"mean_acc": 1.0, "mean_mra": 0.6})
    assert m["peer_scores"]["veripo-eval"]["acc"] == pytest.approx(1.6 / 3)
    assert m["response_len"] == pytest.approx(20.0)
    assert m["thinking_len"] == pytest.approx(4.0)
    assert m["format_rate"] == pytest.approx(2 / 3)
    assert m["truncated_rate"] == pytest.approx(1 / 3)
    assert m["inconsistency_rate"] == pytest.approx(0.5) and m["n_judged"] == 2


def test_headline_profile_switch(rows):
    m = compute_metrics(rows, benchmark="toy", profile="videor1-eval")
    assert m["accuracy"] == pytest.approx(2.6 / 3)
    assert m["by_type"]["multiple choice"] == pytest.approx(1.0)


def test_missing_profile_is_named(rows):
    with pytest.raises(KeyError, match="q1.*'veripo'"):
        compute_metrics(rows, benchmark="toy", profile="veripo")


def test_no_evaluated_items():
    m = compute_metrics([], benchmark="empty")
    assert m["n"] == 0 and m["accuracy"] is None and m["response_len"] is None and m["inconsistency_rate"] is None


def test_inconsistency_rate_ignores_unknown_labels():
    assert inconsistency_rate_of(["consistent", "inconsistent", "inconsistent", "unknown", None]) == (2 / 3, 3)
    assert inconsistency_rate_of(["unknown"]) == (None, 0)


def test_accuracy_by_task_when_samples_name_one(rows):
    assert compute_metrics(rows, benchmark="toy", profile="veripo-eval")["by_task"] == {}  # no task named
    rows[0]["sample"]["extra"] = {"task": "colour_change"}
    rows[1]["sample"]["extra"] = {"task": "colour_change"}
    rows[2]["sample"]["extra"] = {"task": "distance"}
    m = compute_metrics(rows, benchmark="toy", profile="veripo-eval")
    assert m["by_task"] == pytest.approx({"colour_change": 0.5, "distance": 0.6})
    assert m["n_by_task"] == {"colour_change": 2, "distance": 1}
