"""The study's report layer (veripo.report.study) on hand-made per-item values: pairing over the shared
seeds and items, the differences it reports, and the files it writes."""

from __future__ import annotations

import json

import pytest

from veripo.report.study import StudyStage, difference, differences, write_study


def stage(arm, name, kind, accuracy):
    return StudyStage(arm, name, kind, {"accuracy": accuracy, "inconsistency_rate": {}, "response_len": {}})


def test_a_difference_pairs_the_shared_seeds_and_items():
    a = stage("veripo", "dpo", "dpo", {0: {"x": 1.0, "y": 0.0}, 1: {"x": 1.0, "y": 1.0}, 2: {"x": 0.0, "y": 0.0}})
    b = stage("veripo", "sft", "sft", {0: {"x": 0.0, "y": 0.0, "z": 1.0}, 1: {"x": 0.0, "y": 1.0}})
    d = difference(a, b, "accuracy", "gain", n_boot=2000, boot_seed=0)
    # seeds 0 and 1, items x and y: a - b = [[1, 0], [1, 0]]; drawing x twice gives 1, y twice gives 0
    assert (d["mean"], d["low"], d["high"]) == (0.5, 0.0, 1.0)
    assert d["per_seed"] == {"0": 0.5, "1": 0.5} and (d["n_seeds"], d["n_items"]) == (2, 2)
    assert not d["significant"] and "not significant" in d["sentence"] and "higher on 2 and lower on 0 of 2" in d["sentence"]
    every_item_better = stage("veripo", "dpo", "dpo", {0: {"x": 1.0, "y": 1.0}, 1: {"x": 1.0, "y": 2.0}})
    d = difference(every_item_better, b, "accuracy", "gain", n_boot=2000, boot_seed=0)
    assert d["low"] == d["high"] == 1.0 and d["significant"] and "significant: the 95%" in d["sentence"]


def test_an_item_one_seed_lacks_still_counts_for_the_other_seeds():
    # inconsistency labels exist only where the answer had a chain: seed 1 lacks item y in stage a
    a = stage("veripo", "dpo", "dpo", {0: {"x": 0.0, "y": 0.0}, 1: {"x": 0.0}})
    b = stage("veripo", "grpo", "grpo", {0: {"x": 1.0, "y": 1.0}, 1: {"x": 1.0, "y": 0.0}})
    d = difference(a, b, "accuracy", "dpo", n_boot=2000, boot_seed=0)
    # seed 0 over x and y: -1; seed 1 over x alone: -1 (dropping y for every seed would leave one item)
    assert d["per_seed"] == {"0": -1.0, "1": -1.0} and (d["n_seeds"], d["n_items"]) == (2, 2)
    assert d["low"] == d["high"] == -1.0
    lopsided = stage("veripo", "dpo", "dpo", {0: {"x": 1.0, "y": 0.0}, 1: {"y": 1.0}})
    d = difference(lopsided, b, "accuracy", "dpo", n_boot=200, boot_seed=0)
    # seed 0: (0 + -1) / 2; seed 1: y alone, 1 - 0; the mean is the mean of the seeds' values
    assert d["per_seed"] == {"0": -0.5, "1": 1.0} and d["mean"] == 0.25


def test_the_differences_a_study_reports():
    warm = {0: {"x": 0.0, "y": 1.0}}
    arms = {"veripo": [stage("veripo", "sft", "sft", warm), stage("veripo", "grpo", "grpo", {0: {"x": 1.0, "y": 1.0}}),
                       stage("veripo", "align", "dpo", {0: {"x": 1.0, "y": 0.0}})],
            "grpo-rollouts": [stage("grpo-rollouts", "sft", "sft", warm),
                              stage("grpo-rollouts", "grpo-only", "grpo", {0: {"x": 0.0, "y": 0.0}})]}
    found = {(d["what"], d["metric"]): d for d in differences(arms, "veripo", n_boot=200, boot_seed=0)}
    assert set(found) == {("veripo: gain of the last stage over the warm start", "accuracy"),
                          ("veripo: what DPO stage align changed", "accuracy"),
                          ("grpo-rollouts: gain of the last stage over the warm start", "accuracy"),
                          ("veripo vs grpo-rollouts: last stages", "accuracy")}  # no inconsistency values here
    assert found[("veripo: what DPO stage align changed", "accuracy")]["mean"] == -0.5  # align minus grpo
    assert found[("veripo vs grpo-rollouts: last stages", "accuracy")]["mean"] == 0.5


@pytest.mark.slow  # matplotlib: about 2-5 s
def test_write_study_writes_json_csv_markdown_and_a_plot(tmp_path):
    arms = {"veripo": [stage("veripo", "sft", "sft", {0: {"x": 0.0}, 1: {"x": 1.0}}),
                       stage("veripo", "grpo", "grpo", {0: {"x": 1.0}, 1: {"x": 1.0}})]}
    path = write_study(tmp_path, arms, descriptions={"veripo": "VerIPO"}, reference="veripo", meta=["command: x"],
                       n_boot=200)
    data = json.loads((tmp_path / "study.json").read_text())
    acc = data["arms"]["veripo"]["stages"][0]["metrics"]["accuracy"]
    assert (acc["mean"], acc["low"], acc["high"], acc["per_seed"]) == (0.5, 0.0, 1.0, {"0": 0.0, "1": 1.0})
    assert data["arms"]["veripo"]["stages"][0]["metrics"]["inconsistency_rate"] is None
    assert (tmp_path / "study.csv").read_text().splitlines()[1].startswith("veripo,sft,sft,accuracy,0.5,0.0,1.0,2,1,0.0,1.0")
    text = path.read_text()
    assert "0.500 [0.000, 1.000]" in text and "command: x" in text and "study_intervals.png" in text
    assert (tmp_path / "study_intervals.png").is_file() and (tmp_path / "index.html").is_file()
