"""The evaluation runner with a scripted engine: batching, resume after an interruption, missing media,
scores equal to the rewards profiles, peer numbers equal to the peers' own (golden) outputs."""

from __future__ import annotations

import json

import pytest
from scripted import ScriptedEngine, WordTokenizer, encode_id

from veripo.data.jsonl import TornLineWarning, read_jsonl
from veripo.data.media import MediaError
from veripo.data.records import Sample
from veripo.eval import evaluate, read_predictions
from veripo.eval.predictions import original_id, veripo_export_files, videor1_final_acc
from veripo.rewards import PROFILES, get_profile
from veripo.rewards.golden import expected_peer_value, sample_from_golden
from veripo.rewards.predictions import load_predictions


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", problem=f"question {i}", problem_type="multiple choice", answer="AB"[i % 2],
                   options=["A. yes", "B. no"]) for i in range(n)]


def _run(samples, out_dir, engine, **kw):
    return evaluate(None, WordTokenizer(), kw.pop("encode", encode_id), samples, out_dir=out_dir, benchmark="toy",
                    engine=engine, show_progress=False, **kw)


def test_batches_and_metrics(tmp_path):
    engine = ScriptedEngine()  # always answers A
    metrics = _run(_samples(7), tmp_path, engine, batch_size=3)
    assert engine.calls == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6"]]
    assert metrics["n"] == 7 and metrics["accuracy"] == pytest.approx(4 / 7)
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == pytest.approx(4 / 7)
    assert metrics["response_len"] == 1.0 and metrics["thinking_len"] == 1.0  # one word each


def test_resume_after_interruption_neither_repeats_nor_loses(tmp_path):
    samples = _samples(10)
    with pytest.raises(KeyboardInterrupt):
        _run(samples, tmp_path, ScriptedEngine(fail_after=2), batch_size=3)  # killed during the third batch
    assert sorted(read_predictions(tmp_path / "predictions.jsonl")) == [f"s{i}" for i in range(6)]
    # A torn last line, as a kill during a write leaves it, is dropped and that item done again.
    with open(tmp_path / "predictions.jsonl", "ab") as f:
        f.write(b'{"id": "s6", "status": "o')
    resumed = ScriptedEngine()
    with pytest.warns(TornLineWarning):
        metrics = _run(samples, tmp_path, resumed, batch_size=3)
    assert [i for call in resumed.calls for i in call] == [f"s{i}" for i in range(6, 10)]
    ids = [r["id"] for r in read_jsonl(tmp_path / "predictions.jsonl")]
    assert sorted(ids) == sorted(s.id for s in samples)  # each item exactly once
    assert metrics["n"] == 10 and metrics["resumed_items"] == 6
    again = ScriptedEngine()
    assert _run(samples, tmp_path, again)["n"] == 10 and again.calls == []  # a finished run decodes nothing


def test_missing_media_recorded_not_fatal_and_retried(tmp_path):
    def encode(sample):
        if sample.id in ("s1", "s3"):
            raise MediaError(f"/videos/{sample.id}.mp4: video file not found")
        return encode_id(sample)

    samples = _samples(5)
    metrics = _run(samples, tmp_path, ScriptedEngine(), encode=encode, batch_size=2)
    assert metrics["n"] == 3 and metrics["n_missing_media"] == 2 and metrics["n_total"] == 5
    assert [m["id"] for m in metrics["missing_media"]] == ["s1", "s3"]
    assert "s1.mp4: video file not found" in metrics["missing_media"][0]["reason"]
    # Media found later: a re-run evaluates exactly the items that were missing.
    engine = ScriptedEngine()
    metrics = _run(samples, tmp_path, engine, batch_size=2)
    assert engine.calls == [["s1", "s3"]] and metrics["n_missing_media"] == 0 and metrics["n"] == 5


def test_duplicate_ids_rejected(tmp_path):
    samples = _samples(2) + _samples(1)
    with pytest.raises(ValueError, match="unique.*s0"):
        _run(samples, tmp_path, ScriptedEngine())


@pytest.fixture
def golden(shared_data):
    rows = [json.loads(line) for line in (shared_data / "golden" / "reward_goldens.jsonl").read_text().splitlines()]
    samples = [sample_from_golden(r, i) for i, r in enumerate(rows)]
    return rows, samples


def test_prediction_scores_equal_profiles_and_peers(tmp_path, golden):
    rows, samples = golden
    engine = ScriptedEngine({s.id: r["completion"] for r, s in zip(rows, samples)})
    metrics = _run(samples, tmp_path, engine, batch_size=8)
    predictions = read_predictions(tmp_path / "predictions.jsonl")
    for row, sample in zip(rows, samples):
        pred = predictions[sample.id]
        stored = Sample.from_dict(pred["sample"])
        for name in PROFILES:  # every profile, recomputed from the file alone, gives the stored scores exactly
            assert pred["scores"][name] == get_profile(name).score(pred["output"], stored), (sample.id, name)
        # ... and they are the peers' own numbers on these 42 edge cases.
        assert pred["scores"]["veripo-eval"]["accuracy"] == expected_peer_value(row["veripo_calculate_score"])
        assert pred["scores"]["videor1-eval"]["accuracy"] == expected_peer_value(row["videor1_eval_reward"])
    veripo_items = [expected_peer_value(r["veripo_calculate_score"]) for r in rows]
    assert metrics["peer_scores"]["veripo-eval"]["acc"] == pytest.approx(sum(veripo_items) / len(veripo_items))
    videor1 = [{"problem_type": s.problem_type, "reward": expected_peer_value(r["videor1_eval_reward"])}
               for r, s in zip(rows, samples)]
    assert metrics["peer_scores"]["videor1-eval"] == pytest.approx(videor1_final_acc(videor1))


def test_exports_rescore_to_the_same_numbers(tmp_path, golden):
    rows, samples = golden
    engine = ScriptedEngine({s.id: r["completion"] for r, s in zip(rows, samples)})
    metrics = _run(samples, tmp_path, engine, batch_size=16)
    predictions = read_predictions(tmp_path / "predictions.jsonl")
    videor1 = json.loads((tmp_path / "videor1_results.json").read_text())
    assert len(videor1["results"]) == len(samples)
    assert videor1["final_acc"] == [videor1_final_acc(videor1["results"])]
    for item, sample in zip(videor1["results"], samples):
        assert item["reward"] == predictions[sample.id]["scores"]["videor1-eval"]["accuracy"]
        assert {"problem_id", "problem", "problem_type", "options", "solution", "output", "prediction"} <= set(item)
    # The exports read back through the rewards' predictions reader score exactly as our rows did.
    videor1_pairs = load_predictions(tmp_path / "videor1_results.json")
    for (completion, read_sample), sample in zip(videor1_pairs, samples):
        assert get_profile("videor1-eval").score(completion, read_sample)["accuracy"] == \
            predictions[sample.id]["scores"]["videor1-eval"]["accuracy"], sample.id
    # Golden rows mix regression with other non-letter answers: VerIPO's scorer needs them in two files.
    names = metrics["exports"]["veripo"]
    assert names == ["toy.veripo_predictions.json", "toy.vsi_bench.veripo_predictions.json"]
    read = {s.id: (c, s) for name in names for c, s in load_predictions(tmp_path / name)}
    assert len(read) == len(samples)
    for sample in samples:
        completion, read_sample = read[original_id(sample)]
        assert read_sample.problem_type == sample.problem_type
        assert get_profile("veripo-eval").score(completion, read_sample)["accuracy"] == \
            predictions[sample.id]["scores"]["veripo-eval"]["accuracy"], sample.id
    mra_file = json.loads((tmp_path / names[1]).read_text())
    assert {item["question"]["problem_type"] for item in mra_file} == {"regression"}


def _rows_for(kinds_and_answers):
    return [{"sample": {"problem_type": k, "answer": a}, "id": str(i)} for i, (k, a) in enumerate(kinds_and_answers)]


def test_veripo_export_names_follow_its_scorer_rule():
    mc_only = _rows_for([("multiple choice", "A")])
    assert list(veripo_export_files(mc_only, "vsi_bench")) == ["vsibench.veripo_predictions.json"]
    vsi = _rows_for([("multiple choice", "A"), ("regression", "2.5")])
    assert veripo_export_files(vsi, "vsi_bench") == {"vsi_bench.veripo_predictions.json": vsi}
    assert list(veripo_export_files(vsi, "mine")) == ["mine.vsi_bench.veripo_predictions.json"]
    mixed = _rows_for([("numerical", "3"), ("regression", "2.5"), ("multiple choice", "B")])
    files = veripo_export_files(mixed, "mine")
    assert [r["id"] for r in files["mine.veripo_predictions.json"]] == ["0", "2"]
    assert [r["id"] for r in files["mine.vsi_bench.veripo_predictions.json"]] == ["1"]


def test_resume_under_other_settings_is_refused(tmp_path):
    samples = _samples(3)
    _run(samples, tmp_path, ScriptedEngine(), max_new_tokens=8, settings={"prompt": "veripo"})
    with pytest.raises(ValueError, match="max_new_tokens: 8 before, 16 now"):
        _run(samples, tmp_path, ScriptedEngine(), max_new_tokens=16, settings={"prompt": "veripo"})
    with pytest.raises(ValueError, match="prompt: 'veripo' before, 'videor1' now"):
        _run(samples, tmp_path, ScriptedEngine(), max_new_tokens=8, settings={"prompt": "videor1"})
    assert _run(samples, tmp_path, ScriptedEngine(), max_new_tokens=8, batch_size=1,
                settings={"prompt": "veripo"})["n"] == 3  # the batch size does not change greedy answers
