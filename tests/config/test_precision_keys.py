"""model.dtype (compute) and model.master_dtype (master weights and AdamW state), grpo.recompute_old_logprobs:
what the config accepts, what it refuses with the key's path, and what the shipped 7B config asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from veripo.config import ConfigError, RunConfig, load

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_masters_default_to_float32_whatever_the_compute_dtype():
    assert load(RunConfig, None, ["model.dtype=bfloat16"]).model.master_dtype == "float32"
    pure = load(RunConfig, None, ["model.dtype=bfloat16", "model.master_dtype=bfloat16"]).model
    assert (pure.dtype, pure.master_dtype) == ("bfloat16", "bfloat16")  # the negative control stays selectable


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.master_dtype=bfloat16"], "config key 'model.master_dtype': 'bfloat16' with model.dtype 'float32'"),
    (["model.dtype=float16"], "config key 'model.dtype': float16 training needs loss scaling"),
    (["model.master_dtype=float64"], "config key 'model.master_dtype'"),
    (["grpo.recompute_old_logprobs=sometimes"], "config key 'grpo.recompute_old_logprobs'"),
])
def test_precision_settings_that_cannot_work_are_refused_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(RunConfig, None, overrides)


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("auto", "auto")])
def test_recompute_old_logprobs_takes_true_false_or_auto(value, expected):
    assert load(RunConfig, None, [f"grpo.recompute_old_logprobs={value}"]).grpo.recompute_old_logprobs == expected


def test_the_7b_config_computes_in_bf16_over_fp32_masters_with_sharded_layers():
    cfg = load(RunConfig, CONFIGS / "qwen2.5-vl-7b" / "veripo.yaml")
    assert (cfg.model.dtype, cfg.model.master_dtype) == ("bfloat16", "float32")
    assert cfg.distributed.shard_weights and cfg.distributed.shard_optimizer  # fp32 masters need FSDP2 at 80 GB
    assert cfg.grpo.recompute_old_logprobs == "auto"
