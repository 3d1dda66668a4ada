"""Preference pairs from each question's group of judged rollouts (VerIPO's Rollout-Aware Verifier).

Three kinds, tried in the order of ``verifier.pair_types`` until ``max_pairs_per_question``:
- consistency: a good rollout (correct, well formed, consistent, not repetitive or truncated) chosen over
  an inconsistent one (its answer contradicts its own thinking);
- reflective: a good rollout whose chain notices and corrects a mistake chosen over a complete, well-formed
  rollout that reaches a wrong answer and never corrects itself; with ``construct_reflective`` such a chain is also built by splicing (the wrong
  rollout's thinking, "Wait, let me check again.", then a good rollout's thinking and answer) when the
  group has none;
- penalty: a good rollout chosen over one that is repetitive, truncated, badly formatted or wrong.
With ``reference_chosen`` (off by default; the paper builds pairs from rollouts only), a group with no good
rollout gets its sample's reference chain of thought as the chosen side of penalty pairs: useful for a weak
or freshly warm-started policy whose groups are all wrong.
Within a kind the longest good chain is chosen first (VerIPO favours long, consistent reasoning) and each
rejected rollout is used once. Groups with nothing good or nothing bad are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from veripo.data.records import Pair, Rollout, Sample, Verdict, reference_completion


@dataclass
class PairStats:
    pairs: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # no_good, no_bad
    questions: int = 0


def is_good(v: Verdict) -> bool:
    return v.correct and v.format_ok and not v.repetitive and not v.truncated and v.consistency == "consistent"


def rejection_reasons(v: Verdict) -> list[str]:
    reasons = []
    if v.repetitive:
        reasons.append("repetitive")
    if v.truncated:
        reasons.append("truncated")
    if not v.format_ok:
        reasons.append("bad format")
    if not v.correct:
        reasons.append("wrong answer")
    if v.consistency == "inconsistent":
        reasons.append("inconsistent")
    return reasons


def _pair(kind: str, chosen: Rollout, rejected: Rollout, reasons: list[str], *, spliced: str | None = None) -> Pair:
    return Pair(
        id=f"{chosen.sample_id}/{kind}/{chosen.id}>{rejected.id}" + ("/spliced" if spliced else ""),
        sample_id=chosen.sample_id, pair_type=kind,  # type: ignore[arg-type]
        chosen=spliced if spliced is not None else chosen.text, rejected=rejected.text,
        chosen_rollout=None if spliced is not None else chosen.id, rejected_rollout=rejected.id,
        reasons=reasons, chosen_token_ids=None if spliced is not None else chosen.token_ids,
        rejected_token_ids=rejected.token_ids,
    )


def splice_reflection(wrong: Rollout, good: Rollout) -> str:
    """A constructed reflective chain: the wrong chain's thinking, a reflection, then the good chain."""
    return (f"<think>{(wrong.thinking or '').strip()} Wait, let me check again. {(good.thinking or '').strip()}"
            f"</think><answer>{good.answer}</answer>")


def reference_rollout(group: list[Rollout], sample: Sample | None) -> Rollout | None:
    """The sample's reference chain as a stand-in rollout (chosen side only), or None without one."""
    text = reference_completion(sample) if sample is not None else None
    if not group or text is None:
        return None
    first = group[0]
    return Rollout(id=first.id.rsplit("/", 1)[0] + "/reference", sample_id=first.sample_id, group_index=-1, text=text,
                   thinking=sample.reasoning, answer=sample.answer, thinking_tokens=len((sample.reasoning or "").split()))


def build_group_pairs(rollouts: list[Rollout], verdicts: dict[str, Verdict], cfg: Any, stats: PairStats,
                      sample: Sample | None = None) -> list[Pair]:
    """Pairs for one question's rollouts (see the module docstring)."""
    stats.questions += 1
    judged = [(r, verdicts[r.id]) for r in rollouts if r.id in verdicts]
    good = sorted([r for r, v in judged if is_good(v)], key=lambda r: (-r.thinking_tokens, r.group_index))
    bad = [(r, v) for r, v in judged if rejection_reasons(v)]
    if not good and getattr(cfg, "reference_chosen", False):
        reference = reference_rollout(rollouts, sample)
        if reference is not None and bad:
            stats.pairs["penalty"] += min(len(bad), cfg.max_pairs_per_question)
            return [_pair("penalty", reference, r, ["reference chain chosen", *rejection_reasons(v)], spliced=reference.text)
                    for r, v in bad[: cfg.max_pairs_per_question]]
    if not good:
        stats.skipped["no_good"] += 1
        return []
    if not bad:
        stats.skipped["no_bad"] += 1
        return []
    used: set[str] = set()
    pairs: list[Pair] = []
    cap = cfg.max_pairs_per_question
    for kind in cfg.pair_types:
        if len(pairs) >= cap:
            break
        if kind == "consistency":
            candidates = [(r, v) for r, v in bad if v.consistency == "inconsistent"]
            chosen_pool = good
        elif kind == "reflective":
            # a complete, well-formed chain that reaches a wrong answer without correcting itself
            candidates = [(r, v) for r, v in bad
                          if not v.correct and not v.reflective and v.format_ok and not v.truncated]
            chosen_pool = [r for r in good if verdicts[r.id].reflective]
        elif kind == "penalty":
            candidates = bad
            chosen_pool = good
        else:
            raise ValueError(f"unknown pair type {kind!r} in verifier.pair_types; expected consistency, penalty, reflective")
        for i, (rejected, v) in enumerate(candidates):
            if len(pairs) >= cap or rejected.id in used:
                continue
            if chosen_pool:
                chosen = chosen_pool[i % len(chosen_pool)]
                pairs.append(_pair(kind, chosen, rejected, rejection_reasons(v)))
            elif kind == "reflective" and getattr(cfg, "construct_reflective", False) and rejected.thinking:
                chosen = good[i % len(good)]
                pairs.append(_pair(kind, chosen, rejected, ["constructed reflection", *rejection_reasons(v)],
                                   spliced=splice_reflection(rejected, chosen)))
            else:
                continue
            used.add(rejected.id)
            stats.pairs[kind] += 1
    return pairs


def build_pairs(groups: dict[str, list[Rollout]], verdicts: dict[str, Verdict], cfg: Any,
                samples: dict[str, Sample] | None = None) -> tuple[list[Pair], PairStats]:
    """Pairs for every group (``groups``: group key -> the rollouts of one question), and what was skipped;
    ``samples`` (by id) are needed only for ``reference_chosen``."""
    stats = PairStats()
    pairs: list[Pair] = []
    for group in groups.values():
        sample = (samples or {}).get(group[0].sample_id) if group else None
        pairs.extend(build_group_pairs(group, verdicts, cfg, stats, sample))
    return pairs, stats
