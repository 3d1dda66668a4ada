"""Rollouts: sample G responses per question (the `RolloutEngine` protocol and its engines)."""

from veripo.rollout.engine import FinishReason, GeneratedResponse, GroupOutput, RolloutEngine, SamplingParams
from veripo.rollout.hf_engine import HFRolloutEngine

__all__ = ["FinishReason", "GeneratedResponse", "GroupOutput", "HFRolloutEngine", "RolloutEngine", "SamplingParams"]
