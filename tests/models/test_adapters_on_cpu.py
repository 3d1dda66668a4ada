"""LoRA adapters and frozen parts on the tiny model: what trains, exact save/load of adapters, a LoRA
checkpoint loading with load_policy, merging, the missing-package message and the config checks."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from veripo.config import ConfigError, LoraConfig, RunConfig, build
from veripo.data.records import Sample
from veripo.models.adapters import (
    ADAPTER_WEIGHTS,
    add_lora,
    adapter_state,
    freeze_parts,
    has_adapters,
    load_adapters,
    merged_model,
    save_adapters,
)
from veripo.models.loading import load_policy
from veripo.models.prompts import encode_prompt
from veripo.parallel import ParallelStrategy

LORA = LoraConfig(enabled=True, rank=4, alpha=8.0)


def _inputs(policy, frames):
    sample = Sample(id="s", problem="What moves first?", problem_type="free-form", answer="x", video="v.mp4")
    return encode_prompt(policy, sample, frames=frames, video_fps=2.0)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _randomise_adapters(model, seed: int = 1, scale: float = 0.05) -> None:
    """peft starts B at zero (the adapted model equals the base); give every adapter a real update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _adapted(tiny_model_dir, lora: LoraConfig = LORA, seed: int = 1):
    policy = load_policy(tiny_model_dir)
    add_lora(policy.model, lora, seed=0)
    _randomise_adapters(policy.model, seed)
    return policy


def test_only_adapters_train_and_start_as_the_base(tiny_model_dir, frames):
    policy = load_policy(tiny_model_dir)
    inputs = _inputs(policy, frames)
    before = _logits(policy.model, inputs)
    add_lora(policy.model, LORA, seed=0)
    assert has_adapters(policy.model)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # the default targets: every linear layer of the language model, none of the vision tower
    assert not any("visual" in n for n in trainable)
    assert any("self_attn.q_proj" in n for n in trainable) and any("mlp.down_proj" in n for n in trainable)
    torch.testing.assert_close(_logits(policy.model, inputs), before, rtol=0, atol=0)  # B = 0 at the start
    strategy = ParallelStrategy()
    strategy.prepare(policy.model)
    optimizer, _ = strategy.optimizer(1e-3, 0.0, 1.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_adapters_start_from_the_seed(tiny_model_dir):
    """A resumed run re-injects its adapters before loading them; a fresh run must draw the same A."""
    def initial(seed, global_seed):
        model = load_policy(tiny_model_dir).model
        torch.manual_seed(global_seed)  # whatever the global generator holds, the seed decides
        add_lora(model, LORA, seed=seed)
        return adapter_state(model)

    first, again, other = initial(0, global_seed=1000), initial(0, global_seed=2000), initial(1, global_seed=1000)
    a_keys = [k for k in first if ".lora_A." in k]
    assert a_keys and all(torch.equal(first[k], again[k]) for k in first)
    assert all(not torch.equal(first[k], other[k]) for k in a_keys)


def test_saved_adapters_load_exactly(tiny_model_dir, frames, tmp_path):
    policy = _adapted(tiny_model_dir)
    inputs = _inputs(policy, frames)
    save_adapters(policy.model, tmp_path / "ckpt")
    other = load_policy(tiny_model_dir)
    add_lora(other.model, LORA, seed=5)
    load_adapters(other.model, tmp_path / "ckpt")
    mine, theirs = adapter_state(policy.model), adapter_state(other.model)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    torch.testing.assert_close(_logits(other.model, inputs), _logits(policy.model, inputs), rtol=0, atol=0)
    # and the adapters matter: the base model answers differently
    assert (_logits(load_policy(tiny_model_dir).model, inputs) - _logits(policy.model, inputs)).abs().max() > 1e-3


def test_adapters_of_another_shape_are_refused_naming_the_file(tiny_model_dir, tmp_path):
    policy = _adapted(tiny_model_dir)
    save_adapters(policy.model, tmp_path / "ckpt")
    other = load_policy(tiny_model_dir)
    add_lora(other.model, LoraConfig(enabled=True, rank=4, target_modules=("q_proj", "v_proj")), seed=0)
    with pytest.raises(ValueError, match=f"{ADAPTER_WEIGHTS}: adapters do not match"):
        load_adapters(other.model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not an adapter checkpoint"):
        load_adapters(other.model, tmp_path)


def test_an_adapter_checkpoint_loads_with_load_policy(tiny_model_dir, frames, tmp_path):
    policy = _adapted(tiny_model_dir)
    save_adapters(policy.model, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")  # adapter_config.json names the base model
    assert has_adapters(loaded.model)
    inputs = _inputs(policy, frames)
    torch.testing.assert_close(_logits(loaded.model, inputs), _logits(policy.model, inputs), rtol=0, atol=0)


def test_merged_model_generates_what_the_adapted_model_generates(tiny_model_dir, frames, tmp_path):
    policy = _adapted(tiny_model_dir, LoraConfig(enabled=True, rank=4, alpha=8.0, modules_to_save=("lm_head",)))
    with torch.no_grad():  # modules_to_save: lm_head trains whole, and must reach the merged model too
        for name, p in policy.model.named_parameters():
            if "lm_head.modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.05)
    policy.model.eval()
    save_adapters(policy.model, tmp_path / "ckpt")
    merged = merged_model(load_policy(tiny_model_dir).model, tmp_path / "ckpt")
    assert not has_adapters(merged)
    merged.save_pretrained(tmp_path / "merged")
    policy.processor.save_pretrained(tmp_path / "merged")
    plain = load_policy(tmp_path / "merged")  # a plain checkpoint: from_pretrained, no peft involved
    assert not has_adapters(plain.model)
    inputs = _inputs(policy, frames)
    torch.testing.assert_close(_logits(plain.model, inputs), _logits(policy.model, inputs), rtol=1e-5, atol=1e-5)

    def greedy(model):
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=False, max_new_tokens=24, min_new_tokens=24)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    adapted_tokens = greedy(policy.model)
    assert greedy(plain.model) == adapted_tokens
    assert greedy(load_policy(tiny_model_dir).model) != adapted_tokens  # the control: the base answers otherwise


def test_frozen_vision_gets_no_gradient_and_no_optimizer_state(tiny_model_dir, frames):
    policy = load_policy(tiny_model_dir)
    inputs = _inputs(policy, frames)
    visual = {id(p) for p in policy.model.model.visual.parameters()}
    merger = list(policy.model.model.visual.merger.parameters())
    assert merger and all(id(p) in visual for p in merger)  # the merger is part of the frozen tower

    def backward(model):
        model.zero_grad(set_to_none=True)
        model(**inputs).logits.float().logsumexp(-1).mean().backward()
        return [(n, p) for n, p in model.named_parameters()]

    # control: without freezing, the video reaches the vision tower's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in backward(policy.model) if id(p) in visual)
    frozen = freeze_parts(policy.model, ["vision"])
    assert frozen == sum(p.numel() for p in policy.model.model.visual.parameters())
    named = backward(policy.model)
    assert all(p.grad is None for n, p in named if id(p) in visual)
    assert any(p.grad is not None for n, p in named if id(p) not in visual)
    strategy = ParallelStrategy()
    strategy.prepare(policy.model)
    optimizer, _ = strategy.optimizer(1e-3, 0.0, 1.0)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & visual
    assert len(in_optimizer) == sum(1 for p in policy.model.parameters() if id(p) not in visual)
    with pytest.raises(ValueError, match="model.freeze: unknown part 'audio'"):
        freeze_parts(policy.model, ["audio"])


def test_missing_peft_names_the_extra(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    policy = load_policy(tiny_model_dir)
    with pytest.raises(ImportError, match=r"pip install 'veripo\[lora\]'"):
        add_lora(policy.model, LORA, seed=0)
    # a run fails before it writes anything
    from veripo.recipes.veripo import run

    cfg = build(RunConfig, {"output_dir": str(tmp_path / "runs"), "lora": {"enabled": True},
                            "model": {"path": str(tiny_model_dir)}})
    with pytest.raises(ImportError, match=r"pip install 'veripo\[lora\]'"):
        run(cfg, show_progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("override", "key"), [
    ({"rank": 0}, "lora.rank"),
    ({"alpha": math.nan}, "lora.alpha"),
    ({"alpha": math.inf}, "lora.alpha"),
    ({"alpha": -1.0}, "lora.alpha"),
    ({"dropout": 1.0}, "lora.dropout"),
    ({"dropout": -0.1}, "lora.dropout"),
    ({"target_modules": []}, "lora.target_modules"),
])
def test_lora_settings_are_checked_with_their_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        build(RunConfig, {"lora": {"enabled": True, **override}})


def test_lora_with_weight_sharding_is_refused_and_freeze_parts_are_named():
    from veripo.recipes.veripo import check_lora

    with pytest.raises(ConfigError, match="lora.enabled"):
        build(RunConfig, {"lora": {"enabled": True}, "distributed": {"shard_weights": True}})

    class LaunchedSharded(ParallelStrategy):  # what an accelerate FSDP2 / DeepSpeed launch makes of the config
        shards_weights = True

    lora = build(RunConfig, {"lora": {"enabled": True}})
    with pytest.raises(ConfigError, match="config key 'lora.enabled' under LaunchedSharded"):
        check_lora(lora, LaunchedSharded())
    check_lora(lora, ParallelStrategy())
    check_lora(build(RunConfig, {}), LaunchedSharded())
    with pytest.raises(ConfigError, match="model.freeze"):
        build(RunConfig, {"model": {"freeze": ["audio"]}})
    assert build(RunConfig, {"model": {"freeze": ["vision"]}}).model.freeze == ("vision",)


def test_a_lora_checkpoint_as_the_model_trains_its_own_adapters_on(tiny_model_dir, tmp_path):
    from veripo.recipes.veripo import trainable_parts

    policy = _adapted(tiny_model_dir)
    save_adapters(policy.model, tmp_path / "ckpt")
    cfg = build(RunConfig, {"model": {"path": str(tmp_path / "ckpt")}, "lora": {"enabled": True, "rank": 8}})
    warm = load_policy(tmp_path / "ckpt").model
    note = trainable_parts(warm, cfg)
    saved = adapter_state(policy.model)
    assert adapter_state(warm).keys() == saved.keys()  # its own rank-4 adapters, not a second set of rank 8
    assert all(torch.equal(adapter_state(warm)[k], saved[k]) for k in saved)
    trainable = [n for n, p in warm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable) and "parameters train" in note
    with pytest.raises(ConfigError, match="config key 'model.path': .* is a LoRA checkpoint"):
        trainable_parts(load_policy(tmp_path / "ckpt").model, build(RunConfig, {"model": {"path": str(tmp_path)}}))
