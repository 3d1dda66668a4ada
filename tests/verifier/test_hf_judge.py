"""The hf judge on a local random tiny causal LM: greedy, short replies, strict parsing, counted failures."""

from __future__ import annotations

from veripo.config import VerifierConfig
from veripo.data.records import Sample
from veripo.verifier.judges import HFJudge, JudgeItem, make_judge

SAMPLE = Sample(id="n", problem="How many circles?", problem_type="numerical", answer="3")
ITEMS = [JudgeItem(SAMPLE, "I count three circles. Therefore 3.", "3"),
         JudgeItem(SAMPLE, "I count three circles. Therefore 3.", "4")]


def test_hf_judge_noise_is_unknown_and_counted(tiny_causal_lm, tmp_path):
    judge = HFJudge(str(tiny_causal_lm), max_new_tokens=4)
    results = judge.judge(ITEMS)
    assert [r.label for r in results] == ["unknown", "unknown"]
    assert all(r.error == "unparseable verdict" for r in results) and judge.stats["parse_failure"] == 2
    assert judge.judge(ITEMS) == results  # greedy: the same noise again

    template = tmp_path / "mine.txt"
    template.write_text("Q: {question}{options}\nT: {thinking}\nA: {answer}\nVERDICT?")
    cfg = VerifierConfig(judge="hf", judge_model=str(tiny_causal_lm), prompt_template=str(template))
    cached = make_judge(cfg, cache_path=tmp_path / "cache.jsonl")
    assert cached.inner.template == template.read_text()  # the user's prompt replaces the shipped one
    assert [r.label for r in cached.judge(ITEMS)] == ["consistent", "inconsistent"]  # the rule fallback
    assert cached.counters()["fallback_to_rule"] == 2 and cached.counters()["parse_failure"] == 2
