"""``veripo verify`` on a small rollouts file: the table, the three pair kinds, the files, a re-run, errors."""

from __future__ import annotations

import json

from answers import a_different_answer
from typer.testing import CliRunner

from veripo.cli.main import app
from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.records import Pair, Rollout, Sample, Verdict

SAMPLE = Sample(id="ball", problem="Which way did the ball move?", problem_type="multiple choice", answer="B",
                options=["A. up", "B. left", "C. right"])
TEXTS = [
    # corrects itself and ends right: good and reflective
    ("<think>The ball goes right, so the answer is C. Wait, let me re-check frame 3. It is left, so the answer is B."
     "</think><answer>B</answer>"),
    "<think>The ball moves left. So the answer is B.</think><answer>C</answer>",  # contradicts its thinking
    "<think>The ball moves right. So the answer is C.</think><answer>C</answer>",  # wrong, never corrected
    "<think>" + "the ball moves left " * 20 + "So the answer is B.</think><answer>B</answer>",  # a loop
    "<think>The ball starts in the middle and then",  # cut off by the token cap
]


def write_run(folder, texts=TEXTS):
    with JsonlWriter(folder / "rollouts.jsonl") as w:
        w.write_many([Rollout(id=f"ball/0/{i}", sample_id="ball", group_index=i, text=t, truncated=i == 4,
                              token_ids=[i, i + 1]) for i, t in enumerate(texts)])
    with JsonlWriter(folder / "samples.jsonl") as w:
        w.write_many([SAMPLE])
    return folder / "rollouts.jsonl"


def test_verify_cli_writes_all_three_pair_kinds(tmp_path):
    rollouts = write_run(tmp_path)
    result = CliRunner().invoke(app, ["verify", str(rollouts), "--out", str(tmp_path / "v" / "pairs.jsonl"),
                                      "--set", "verifier.max_pairs_per_question=4"])
    assert result.exit_code == 0, result.output
    for row in ("format", "accuracy", "repetition", "truncation", "consistency", "pairs: reflective",
                "inconsistency rate (judged)"):
        assert row in result.output
    pairs = read_jsonl(tmp_path / "v" / "pairs.jsonl", Pair)
    assert {(p.pair_type, p.rejected_rollout) for p in pairs} == {
        ("consistency", "ball/0/1"), ("reflective", "ball/0/2"), ("penalty", "ball/0/3"), ("penalty", "ball/0/4")}
    assert all(p.chosen_rollout == "ball/0/0" and p.chosen_token_ids == [0, 1] for p in pairs)
    verdicts = {v.rollout_id: v for v in read_jsonl(tmp_path / "v" / "verdicts.jsonl", Verdict)}
    assert verdicts["ball/0/0"].reflective and verdicts["ball/0/0"].consistency == "consistent"
    assert verdicts["ball/0/1"].consistency == "inconsistent" and verdicts["ball/0/3"].repetitive
    assert verdicts["ball/0/4"].truncated and verdicts["ball/0/4"].consistency == "unknown"
    summary = json.loads((tmp_path / "v" / "verify_summary.json").read_text())
    assert summary["pairs"] == {"consistency": 1, "penalty": 2, "reflective": 1}
    assert summary["failed"] == {"format": 1, "accuracy": 3, "repetition": 1, "truncation": 1, "consistency": 1}
    assert summary["inconsistency_rate"] == 1 / 4  # 4 judged, 1 unknown (the truncated one)
    assert summary["inconsistency_rate_all"] == 1 / 5
    assert "25.0%" in result.output and "20.0%" in result.output

    again = CliRunner().invoke(app, ["verify", str(rollouts), "--out-dir", str(tmp_path / "v")])
    assert again.exit_code == 0, again.output
    assert "cache_hits=4" in again.output  # the re-run asked nothing anew (4 judged, the cut one not asked)
    assert "1 rollout(s) without thinking or answer" in again.output


def test_verify_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no such rollouts file" in result.output
    rollouts = write_run(tmp_path)
    (tmp_path / "samples.jsonl").unlink()
    result = runner.invoke(app, ["verify", str(rollouts)])
    assert result.exit_code == 2 and "--samples" in result.output
    result = runner.invoke(app, ["verify", str(rollouts), "--judge", "magic"])
    assert result.exit_code == 2 and "rule, hf, openai" in result.output
    rollouts.unlink()  # the writer appends: a second write_run would repeat every rollout id (refused since)
    write_run(tmp_path)
    result = runner.invoke(app, ["verify", str(rollouts), "--judge", "openai"])
    assert result.exit_code == 2 and "--judge-url" in result.output


def test_verify_cli_defaults_to_the_runs_data_and_config(tmp_path):
    """Rollouts in RUN/stages/NN-name/: the questions come from RUN/config.yaml's data (synthetic, generated
    under the run by the same SampleStore the run used) and its verifier section applies."""
    from veripo.data.loaders import load_samples
    from veripo.data.records import reference_completion

    run = tmp_path / "run"
    stage = run / "stages" / "00-grpo"
    stage.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "data:\n  - path: synth\n    synthetic: {n: 4, kinds: [text], seed: 3}\n"
        "verifier:\n  pair_types: [penalty]\n"
        "stages:\n  - {name: grpo, kind: grpo}\n  - {name: verify, kind: verify, verifier: {pair_types: [consistency]}}\n")
    runner = CliRunner()
    rollouts = stage / "rollouts.jsonl"
    rollouts.write_text("")
    first = runner.invoke(app, ["verify", str(rollouts)])
    assert first.exit_code == 0, first.output  # no rollouts yet, but the data was found and generated
    questions = load_samples(run / "data" / "synth").samples
    assert len(questions) == 4 and "4 questions from the data of" in first.output

    with JsonlWriter(rollouts) as w:
        for s in questions:
            w.write(Rollout(id=f"{s.id}/0", sample_id=s.id, group_index=0, text=reference_completion(s), stage="grpo"))
            w.write(Rollout(id=f"{s.id}/1", sample_id=s.id, group_index=1, stage="grpo",
                            text=f"<think>{s.reasoning}</think><answer>{a_different_answer(s)}</answer>"))
    result = runner.invoke(app, ["verify", str(rollouts), "--profile", "veripo"])
    assert result.exit_code == 0, result.output
    summary = json.loads((stage / "verify" / "verify_summary.json").read_text())
    assert summary["missing_samples"] == 0 and summary["checked"] == 8
    assert summary["consistency"] == {"consistent": 4, "inconsistent": 4}
    pairs = read_jsonl(stage / "verify" / "pairs.jsonl", Pair)
    assert sorted(p.rejected_rollout for p in pairs) == sorted(f"{s.id}/1" for s in questions)
    assert {p.pair_type for p in pairs} == {"consistency"}  # the verify stage's verifier overrides apply
    assert "verifier settings of stage 'verify'" in result.output
    mine = runner.invoke(app, ["verify", str(rollouts), "--set", "verifier.pair_types=[penalty]"])
    assert mine.exit_code == 0, mine.output  # the command line wins over the stage
    assert {p.pair_type for p in read_jsonl(stage / "verify" / "pairs.jsonl", Pair)} == {"penalty"}
    bad = runner.invoke(app, ["verify", str(rollouts), "--profile", "nope"])
    assert bad.exit_code == 2 and "--profile 'nope'" in bad.output
    (run / "config.yaml").write_text("rollout:\n  prefill_once: true\n")  # a run config from an older schema
    old = runner.invoke(app, ["verify", str(rollouts)])
    assert old.exit_code == 2 and "rollout.prefill_once" in old.output and "--config FILE" in old.output
    samples = tmp_path / "questions.jsonl"
    with JsonlWriter(samples) as w:
        w.write_many(questions)
    (tmp_path / "plain.yaml").write_text("verifier:\n  pair_types: [consistency]\n")
    fixed = runner.invoke(app, ["verify", str(rollouts), "--config", str(tmp_path / "plain.yaml"),
                                "--samples", str(samples)])
    assert fixed.exit_code == 0, fixed.output
    assert json.loads((stage / "verify" / "verify_summary.json").read_text())["pairs"]["consistency"] == 4


def test_verify_cli_names_the_bad_record(tmp_path):
    rollouts = write_run(tmp_path)
    with open(rollouts, "a") as f:
        f.write('{"id": "ball/0/9", "sample_id": "ball"}\n')
    result = CliRunner().invoke(app, ["verify", str(rollouts)])
    assert result.exit_code == 2 and "rollouts.jsonl:7" in result.output  # line 1: the header and "group_index" in result.output
    template = tmp_path / "prompt.txt"
    template.write_text("{thinking} only")
    rollouts.unlink()
    write_run(tmp_path)
    result = CliRunner().invoke(app, ["verify", str(rollouts), "--set", f"verifier.prompt_template={template}"])
    assert result.exit_code == 2 and "expected {thinking} and {answer}" in result.output


def test_verify_cli_with_an_openai_judge_that_dies(tmp_path, monkeypatch):
    from judge_servers import FakeJudgeServer

    monkeypatch.setenv("VERIPO_JUDGE_API_KEY", "sk-cli-secret-777")
    rollouts = write_run(tmp_path)
    with FakeJudgeServer(lambda prompt: "VERDICT: CONSISTENT", die_after=2) as server:
        result = CliRunner().invoke(app, [
            "verify", str(rollouts), "--judge", "openai", "--judge-url", server.url, "--judge-model", "judge",
            "--set", "verifier.retries=0", "--set", "verifier.timeout_s=2", "--set", "verifier.concurrency=1"])
    assert result.exit_code == 0, result.output
    assert "judge openai" in result.output and "fallback_to_rule=2" in result.output  # 2 answered, 2 lost
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-cli-secret-777"
    assert "sk-cli-secret-777" not in result.output
    summary = json.loads((tmp_path / "verify" / "verify_summary.json").read_text())
    assert summary["judge_counters"]["consistent"] == 2  # the server says consistent, even for ball/0/1 ...
    verdicts = {v.rollout_id: v for v in read_jsonl(tmp_path / "verify" / "verdicts.jsonl", Verdict)}
    assert verdicts["ball/0/1"].consistency == "consistent"  # ... and is believed: it answered
    assert verdicts["ball/0/2"].consistency == "consistent"  # the rule judge's label after the server died
    assert any(r.startswith("judge: fallback to rule after") for r in verdicts["ball/0/2"].reasons)
    assert summary["consistency"] == {"consistent": 4, "unknown": 1}
