"""Config: YAML -> frozen dataclasses, dotted overrides, validation with helpful messages."""

from veripo.config.core import ConfigError, apply_overrides, build, dump_yaml, load, read_yaml, to_dict
from veripo.config.schema import (
    DataSource,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    LoraConfig,
    MediaConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    SFTConfig,
    Stage,
    VerifierConfig,
)

__all__ = [
    "ConfigError", "apply_overrides", "build", "dump_yaml", "load", "read_yaml", "to_dict",
    "DataSource", "DPOConfig", "EvalConfig", "GRPOConfig", "LoraConfig", "MediaConfig", "ModelConfig", "RewardConfig",
    "RolloutConfig", "RunConfig", "SFTConfig", "Stage", "VerifierConfig",
]
