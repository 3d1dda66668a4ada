"""veripo: VerIPO (GRPO -> Rollout-Aware Verifier -> DPO, iterated) for vision and video LLMs."""

__version__ = "0.1.0"
