"""Pair rules on a hand-built group: all three kinds, the cap, the mix, skipped groups, provenance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from veripo.config import VerifierConfig
from veripo.data.records import Rollout, Verdict
from veripo.verifier.pairs import build_pairs, splice_reflection


def make(rid: str, *, correct=True, consistency="consistent", reflective=False, repetitive=False, truncated=False,
         format_ok=True, thinking_tokens=10, sample_id="q") -> tuple[Rollout, Verdict]:
    text = f"<think>chain {rid}</think><answer>{'B' if correct else 'C'}</answer>"
    r = Rollout(id=f"{sample_id}/0/{rid}", sample_id=sample_id, group_index=len(rid), text=text,
                thinking=f"chain {rid}", answer="B" if correct else "C", thinking_tokens=thinking_tokens,
                token_ids=[ord(c) for c in rid])
    v = Verdict(rollout_id=r.id, sample_id=sample_id, format_ok=format_ok, accuracy=float(correct), correct=correct,
                thinking_tokens=thinking_tokens, repetitive=repetitive, truncated=truncated,
                consistency=consistency, reflective=reflective)
    return r, v


def group(*made) -> tuple[dict[str, list[Rollout]], dict[str, Verdict]]:
    rollouts = [r for r, _ in made]
    return {rollouts[0].sample_id: rollouts}, {v.rollout_id: v for _, v in made}


GROUP = [
    make("good_reflective", reflective=True, thinking_tokens=40),
    make("good_plain", thinking_tokens=20),
    make("inconsistent", consistency="inconsistent"),  # right answer, but not the one its thinking reached
    make("wrong", correct=False),
    make("loop", repetitive=True),
    make("cut", truncated=True, format_ok=False),
]


def test_all_three_kinds_with_provenance():
    groups, verdicts = group(*GROUP)
    pairs, stats = build_pairs(groups, verdicts, VerifierConfig(max_pairs_per_question=10))
    kinds = {(p.pair_type, p.chosen_rollout.split("/")[-1], p.rejected_rollout.split("/")[-1]) for p in pairs}
    assert ("consistency", "good_reflective", "inconsistent") in kinds
    assert ("reflective", "good_reflective", "wrong") in kinds
    assert {k[2] for k in kinds if k[0] == "penalty"} == {"loop", "cut"}
    assert len({p.rejected_rollout for p in pairs}) == len(pairs)  # each rejected rollout used once
    assert dict(stats.pairs) == {"consistency": 1, "reflective": 1, "penalty": 2}
    by_rejected = {p.rejected_rollout.split("/")[-1]: p for p in pairs}
    assert by_rejected["cut"].reasons == ["truncated", "bad format"]
    assert by_rejected["inconsistent"].reasons == ["inconsistent"]
    assert by_rejected["wrong"].chosen_token_ids == [ord(c) for c in "good_reflective"]
    assert by_rejected["wrong"].rejected_token_ids == [ord(c) for c in "wrong"]
    for p in pairs:
        assert p.sample_id == "q" and verdicts[p.chosen_rollout].correct and p.chosen != p.rejected


def test_cap_and_mix_order():
    groups, verdicts = group(*GROUP)
    pairs, _ = build_pairs(groups, verdicts, VerifierConfig(max_pairs_per_question=2))
    assert [p.pair_type for p in pairs] == ["consistency", "reflective"]
    pairs, stats = build_pairs(groups, verdicts, VerifierConfig(max_pairs_per_question=2, pair_types=("penalty",)))
    assert [p.pair_type for p in pairs] == ["penalty", "penalty"] and stats.pairs["penalty"] == 2
    with pytest.raises(ValueError, match="unknown pair type 'other'"):
        build_pairs(groups, verdicts, VerifierConfig(pair_types=("other",)))


def test_skipped_groups_are_counted():
    all_good = group(make("a", sample_id="s1"), make("b", sample_id="s1"))
    all_bad = group(make("a", correct=False, sample_id="s2"), make("b", repetitive=True, sample_id="s2"))
    mixed = group(*GROUP)
    groups = {**all_good[0], **all_bad[0], **mixed[0]}
    verdicts = {**all_good[1], **all_bad[1], **mixed[1]}
    pairs, stats = build_pairs(groups, verdicts, VerifierConfig())
    assert stats.questions == 3 and dict(stats.skipped) == {"no_bad": 1, "no_good": 1}
    assert {p.sample_id for p in pairs} == {"q"} and len(pairs) == 2  # default cap


def test_unknown_consistency_is_never_chosen():
    groups, verdicts = group(make("unsure", consistency="unknown"), make("wrong", correct=False))
    pairs, stats = build_pairs(groups, verdicts, VerifierConfig())
    assert pairs == [] and stats.skipped["no_good"] == 1


def test_constructed_reflective_pairs():
    made = [make("good"), make("wrong", correct=False)]
    groups, verdicts = group(*made)
    natural_only, _ = build_pairs(groups, verdicts, VerifierConfig(pair_types=("reflective",)))
    assert natural_only == []  # no good chain in the group corrects itself
    cfg = VerifierConfig(pair_types=("reflective",), construct_reflective=True)
    [pair], stats = build_pairs(groups, verdicts, cfg)
    assert pair.chosen_rollout is None and pair.chosen_token_ids is None  # constructed text: re-tokenised by DPO
    assert pair.rejected_rollout == "q/0/wrong" and pair.reasons[0] == "constructed reflection"
    assert pair.chosen == splice_reflection(made[1][0], made[0][0])
    assert pair.chosen == "<think>chain wrong Wait, let me check again. chain good</think><answer>B</answer>"
    assert stats.pairs["reflective"] == 1


def test_longest_good_chain_chosen_first():
    made = [make("short", thinking_tokens=5), make("long", thinking_tokens=50), make("bad", correct=False)]
    groups, verdicts = group(*made)
    [pair], _ = build_pairs(groups, verdicts, VerifierConfig(pair_types=("penalty",)))
    assert pair.chosen_rollout == "q/0/long"
    verdicts["q/0/long"] = replace(verdicts["q/0/long"], consistency="inconsistent")
    pairs, _ = build_pairs(groups, verdicts, VerifierConfig(pair_types=("consistency",)))
    assert [p.chosen_rollout for p in pairs] == ["q/0/short"]


def test_reference_chosen_only_when_asked_and_only_for_groups_without_a_good_rollout():
    from veripo.data.records import Sample

    sample = Sample(id="q", problem="Which way?", problem_type="multiple choice", answer="B",
                    options=["A. up", "B. left"], reasoning="It ends on the left. So the answer is B.")
    groups, verdicts = group(make("wrong", correct=False), make("loop", repetitive=True), make("cut", truncated=True))
    pairs, stats = build_pairs(groups, verdicts, VerifierConfig(), {"q": sample})
    assert pairs == [] and stats.skipped["no_good"] == 1  # the paper's rule: rollouts only
    cfg = VerifierConfig(reference_chosen=True, max_pairs_per_question=2)
    pairs, stats = build_pairs(groups, verdicts, cfg, {"q": sample})
    assert [p.rejected_rollout for p in pairs] == ["q/0/wrong", "q/0/loop"] and stats.pairs["penalty"] == 2
    for p in pairs:
        assert p.pair_type == "penalty" and p.chosen_rollout is None and p.chosen_token_ids is None
        assert p.chosen == "<think>It ends on the left. So the answer is B.</think><answer>B</answer>"
        assert p.reasons[0] == "reference chain chosen"
    no_reasoning = Sample(id="q", problem="Which way?", problem_type="multiple choice", answer="B")
    pairs, stats = build_pairs(groups, verdicts, cfg, {"q": no_reasoning})
    assert pairs == [] and stats.skipped["no_good"] == 1  # nothing to choose: skipped and counted
    mixed = group(make("good"), make("wrong", correct=False))
    [pair], _ = build_pairs(*mixed, cfg, {"q": sample})
    assert pair.chosen_rollout == "q/0/good"  # a group with a good rollout uses it, not the reference
