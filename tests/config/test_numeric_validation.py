"""Every numeric config key is validated: found by walking the schema dataclasses (a field added to any section
is covered without a list to keep up to date), each must be finite, and each named by ``NUMBER_RULES`` must lie
in its range; the message names the key's dotted path."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import pytest

from veripo.config import ConfigError, RunConfig, build, load
from veripo.config.core import check_numbers, number_rule

# numeric keys no name rule covers: checked for being finite, and by their section's own validate()
FINITE_ONLY = {"rewards.weights", "grpo.dual_clip", "rewards.length.bonus"}  # a negative bonus is a penalty


def numeric_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, annotated type) of every int/float field, descending into sections and data sources."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) or (tp,)
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        if nested:
            out += numeric_keys(nested[0], f"{prefix}{f.name}.")
        elif any(a in (int, float) for a in args) or typing.get_origin(tp) is dict and float in typing.get_args(tp):
            out.append((f"{prefix}{f.name}", tp))
    return out


# keys whose range edge another key's check refuses (min_frames <= max_frames, min_pixels <= max_pixels, top_p
# above 0, a rollout batch's responses divisible by the optimizer batch, eval_every needs eval.heldout, a
# correctness threshold of 0 would count every response correct)
CROSS_CHECKED = {"media.max_frames", "media.max_pixels", "rollout.top_p", "grpo.rollout_batch_size",
                 "grpo.global_batch_size", "sft.eval_every", "grpo.eval_every", "dpo.eval_every",
                 "rewards.correct_threshold", "verifier.correct_threshold", "rewards.length.max_tokens",
                 "rollout.vllm_gpu_memory_utilization"}  # vLLM needs some memory: above 0
KEYS = numeric_keys()
RULED = [(k, tp) for k, tp in KEYS if number_rule(k.rsplit(".", 1)[-1]) is not None]


def test_the_walk_finds_the_sections_and_every_numeric_key_has_a_rule():
    found = {k for k, _ in KEYS}
    assert {"grpo.lr", "sft.batch_size", "rollout.temperature", "media.fps", "data.weight", "max_bad_share"} <= found
    unruled = sorted(k for k in found if number_rule(k.rsplit(".", 1)[-1]) is None)
    assert set(unruled) == FINITE_ONLY, (
        f"{unruled}: numeric config keys without a range rule; name them by the conventions of NUMBER_RULES "
        "(veripo/config/core.py) or add a rule")


def test_the_defaults_pass():
    build(RunConfig, {})


def _override(key: str, value: Any) -> list[str]:
    """An override that sets ``key``; keys inside a list of data sources go through a one-source list."""
    if key.startswith(("data.", "eval.heldout.")):
        head, leaf = key.rsplit(".", 1)
        return [f"{head}=[{{path: x.json, {leaf}: {value}}}]"]
    if key.startswith(("stages.", "loop.")):
        part, rest = key.split(".", 1)
        head, leaf = rest.rsplit(".", 1)
        return [f"{part}=[{{name: s, kind: sft, {head}: [{{path: x.json, {leaf}: {value}}}]}}]"]
    return [f"{key}={value}"]


@pytest.mark.parametrize("key", [k for k, _ in KEYS if k not in FINITE_ONLY])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_not_finite_is_refused_naming_the_key(key: str, value: str):
    leaf = key.rsplit(".", 1)[-1]
    with pytest.raises(ConfigError, match=rf"'[^']*{leaf}'"):
        load(RunConfig, None, _override(key, value))


@pytest.mark.parametrize("key,tp", RULED, ids=[k for k, _ in RULED])
def test_just_outside_the_range_is_refused_and_the_edge_accepted(key: str, tp: Any):
    kind, low, closed, high = number_rule(key.rsplit(".", 1)[-1])
    is_int = int in (typing.get_args(tp) or (tp,))
    below = low - 1 if is_int else (low if not closed else low - 1e-9)
    with pytest.raises(ConfigError, match=key.rsplit(".", 1)[-1]):
        load(RunConfig, None, _override(key, below))
    edge = low if closed else (low + 1 if is_int else low + 1e-9)
    if key not in CROSS_CHECKED:
        load(RunConfig, None, _override(key, edge))
    if math.isfinite(high):
        with pytest.raises(ConfigError, match=key.rsplit(".", 1)[-1]):
            load(RunConfig, None, _override(key, high + 0.5))


def test_numbers_inside_mappings_and_lists():
    with pytest.raises(ConfigError, match=r"'rewards.weights.accuracy'.*finite"):
        load(RunConfig, None, ["rewards.weights={accuracy: .nan}"])
    load(RunConfig, None, ["rewards.weights={length: -0.5}"])  # a penalty's weight may be negative
    with pytest.raises(ConfigError, match=r"stages\[0\].grpo.lr"):
        load(RunConfig, None, ["stages=[{name: g, kind: grpo, grpo: {lr: .inf}}]"])
    check_numbers({"a": [1.0, 2]}, "x")
    with pytest.raises(ConfigError, match=r"'x.a\[1\]'"):
        check_numbers({"a": [1.0, math.nan]}, "x")
