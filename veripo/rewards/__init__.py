"""Rewards and scoring: parse completions, score answers per problem type, reproduce peers' scorers.

- ``parse_completion`` / ``extract_choice`` / ``extract_number``: tolerant reading of model output.
- ``REWARDS`` / ``register_reward`` / ``get_reward``: pure ``(completion, sample) -> float`` rewards.
- ``get_profile``: named scoring profiles (videor1-train, videor1-eval, veripo-eval, veripo).
- ``score_batch`` / ``ScoringPool``: many completions in worker processes with a hard per-item timeout.
- ``adaptive_length_rewards``: the group-level length shaping.
See docs/rewards.md.
"""

from veripo.rewards.batch import ScoredBatch, ScoringPool, score_batch
from veripo.rewards.group import adaptive_length_rewards
from veripo.rewards.parsing import (
    ParsedCompletion,
    extract_choice,
    extract_number,
    parse_completion,
)
from veripo.rewards.profiles import PROFILES, ScoringProfile, build_profile, get_profile
from veripo.rewards.registry import REWARDS, RewardFn, get_reward, gold_problem, register_reward

__all__ = [
    "PROFILES",
    "REWARDS",
    "ParsedCompletion",
    "RewardFn",
    "ScoredBatch",
    "ScoringPool",
    "ScoringProfile",
    "adaptive_length_rewards",
    "build_profile",
    "extract_choice",
    "extract_number",
    "get_profile",
    "get_reward",
    "gold_problem",
    "parse_completion",
    "register_reward",
    "score_batch",
]
