"""The Rollout-Aware Verifier: rule checks and a consistency judge on every rollout, preference pairs.

- ``checks``: repetition, reflection, the conclusion a chain of thought reaches.
- ``judges``: the ``Judge`` protocol; ``rule``, ``openai`` (any OpenAI-compatible server) and ``hf`` judges,
  cached by content hash, with the rule judge as fallback.
- ``pairs``: consistency, reflective and penalty pairs from each question's group.
- ``run``: ``verify_rollouts`` (files in, verdicts/pairs/summary out) and the inconsistency rate.
"""

from veripo.verifier.judges import (
    JUDGES,
    Judge,
    JudgeItem,
    JudgeResult,
    make_eval_judge,
    make_judge,
    parse_verdict,
)
from veripo.verifier.pairs import PairStats, build_pairs
from veripo.verifier.run import (
    VerifySummary,
    check_rollout,
    inconsistency_rate,
    verify_rollouts,
)

__all__ = ["JUDGES", "Judge", "JudgeItem", "JudgeResult", "PairStats", "VerifySummary", "build_pairs", "check_rollout",
           "inconsistency_rate", "make_eval_judge", "make_judge", "parse_verdict", "verify_rollouts"]
