"""A LoRA run of the VerIPO loop (SFT -> GRPO -> verify -> DPO) on the tiny model, vision tower frozen: GRPO
changes only adapter weights, the optimizer holds state for the adapters alone, DPO's reference log-probs are
the stage-start adapted model's, and ``veripo export`` writes a merged model that generates what the run's
adapted model generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import veripo.recipes.veripo as veripo_recipe
from veripo.config import RunConfig, build
from veripo.data.jsonl import read_jsonl
from veripo.data.records import Pair
from veripo.models.adapters import ADAPTER_WEIGHTS, has_adapters
from veripo.models.grouped_forward import response_log_probs
from veripo.models.loading import load_policy
from veripo.recipes.checkpoint import latest_checkpoint
from veripo.recipes.dpo import pair_rows, pair_token_ids
from veripo.recipes.export import export_run
from veripo.rewards.registry import REWARDS, register_reward

pytestmark = pytest.mark.slow


def digit_share(completion: str, sample: object) -> float:
    """Varies within every group of an untrained model's rollouts, so GRPO's advantages are not all zero."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def lora_config(tiny_model_dir: Path, out: Path) -> RunConfig:
    return build(RunConfig, {
        "name": "lora", "seed": 3, "output_dir": str(out),
        # with gradient checkpointing, and a KL term whose frozen reference is a copy of the adapted policy
        "model": {"path": str(tiny_model_dir), "device": "cpu", "freeze": ["vision"], "gradient_checkpointing": True},
        "lora": {"enabled": True, "rank": 4, "alpha": 8.0},
        "media": {"max_frames": 4, "max_pixels": 3136},
        "rollout": {"num_generations": 4, "max_new_tokens": 16, "temperature": 1.0},
        "rewards": {"extra": ["test_lora_digit_share"]},
        "data": [{"path": "synthetic/train", "synthetic": {"n": 8, "seed": 1, "kinds": ["video", "image", "text"],
                                                           "frames": [4, 4], "size": 56}}],
        "sft": {"lr": 3e-3, "batch_size": 4, "epochs": 1, "save_every": 1},
        "grpo": {"lr": 1e-2, "rollout_batch_size": 2, "global_batch_size": 8, "rollout_batches": 2, "kl_coef": 0.05},
        "dpo": {"lr": 1e-2, "global_batch_size": 2, "epochs": 1},
        "verifier": {"max_pairs_per_question": 2, "construct_reflective": True, "reference_chosen": True},
        "iterations": 0,
        "stages": [{"name": "sft", "kind": "sft"}, {"name": "grpo", "kind": "grpo"},
                   {"name": "verify", "kind": "verify"}, {"name": "dpo", "kind": "dpo"}],
    })


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    """The run's directory, its in-memory policy at the end and the DPO stage's context."""
    captured = {}
    load_base_policy, run_dpo = veripo_recipe.load_base_policy, veripo_recipe.PHASES["dpo"]

    def keep_policy(*args):
        captured["policy"] = load_base_policy(*args)
        return captured["policy"]

    def keep_dpo_context(ctx):
        captured["dpo"] = ctx
        return run_dpo(ctx)

    register_reward("test_lora_digit_share")(digit_share)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(veripo_recipe, "load_base_policy", keep_policy)
            patch.setitem(veripo_recipe.PHASES, "dpo", keep_dpo_context)
            cfg = lora_config(tiny_model_dir, tmp_path_factory.mktemp("lora"))
            root = veripo_recipe.run(cfg, show_progress=False).root
    finally:
        REWARDS.pop("test_lora_digit_share", None)
    return root, captured


def _stage_ckpt(root: Path, name: str) -> Path:
    return latest_checkpoint(next((root / "stages").glob(f"*-{name}")))


def test_lora_training_changes_only_adapter_weights(lora_run, tiny_model_dir):
    root, captured = lora_run
    model = captured["policy"].model
    base = load_policy(tiny_model_dir).model.state_dict()
    adapter_keys = [k for k in model.state_dict() if ".lora_" in k]
    assert adapter_keys
    for name, tensor in model.state_dict().items():
        if ".lora_" not in name:  # peft keeps an adapted layer's own weight as <layer>.base_layer.weight
            assert torch.equal(tensor, base[name.replace(".base_layer.", ".")]), name
    # GRPO took real steps and they moved the adapters
    grpo_rows = [r for r in read_jsonl(next((root / "stages").glob("*-grpo")) / "metrics.jsonl") if "grad_norm" in r]
    assert grpo_rows and all(r["grad_norm"] > 0 for r in grpo_rows)
    assert grpo_rows[-1]["kl"] > 0  # the reference copy kept the stage-start adapters while the policy moved
    before = load_file(str(_stage_ckpt(root, "sft") / ADAPTER_WEIGHTS))
    after = load_file(str(_stage_ckpt(root, "grpo") / ADAPTER_WEIGHTS))
    assert before.keys() == after.keys() and len(after) == len(adapter_keys)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    # the checkpoint holds adapters only, and the optimizer's state is the adapters' alone
    assert not list(_stage_ckpt(root, "grpo").glob("model*.safetensors"))
    state = torch.load(_stage_ckpt(root, "grpo") / "optimizer.pt", weights_only=True)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in state["state"].values())
    assert shapes == sorted(tuple(t.shape) for t in after.values())
    # frozen and base weights got no gradient during the last step
    assert all(p.grad is None for n, p in model.named_parameters() if ".lora_" not in n)


def _pair_logps(model, ctx, pairs: list[Pair]) -> dict[str, list[float]]:
    by_id = {s.id: s for s in ctx.samples}
    out = {}
    for pair in pairs:
        ids, mask = pair_rows([pair], {pair.id: pair_token_ids(ctx.policy.tokenizer, pair)})
        logp = response_log_probs(model, ctx.encode(by_id[pair.sample_id]), ids, mask).log_probs
        out[pair.id] = (logp * mask).sum(-1).tolist()
    return out


def test_dpo_reference_is_the_stage_start_adapted_model(lora_run, tiny_model_dir):
    root, captured = lora_run
    ctx = captured["dpo"]
    stage_dir = next((root / "stages").glob("*-dpo"))
    reference = json.loads((stage_dir / "reference_logps.json").read_text())
    pairs = read_jsonl(next((root / "stages").glob("*-verify")) / "pairs.jsonl", Pair)
    assert pairs and set(reference) == {p.id for p in pairs}
    start = load_policy(_stage_ckpt(root, "grpo")).model  # the adapters DPO started from, on their base
    assert has_adapters(start)
    expected = _pair_logps(start, ctx, pairs)
    for pid, values in reference.items():
        torch.testing.assert_close(torch.tensor(values), torch.tensor(expected[pid]), rtol=0, atol=1e-4)

    def largest_gap(model) -> float:
        other = _pair_logps(model, ctx, pairs)
        return max(abs(a - b) for pid in reference for a, b in zip(reference[pid], other[pid]))

    assert largest_gap(load_policy(tiny_model_dir).model) > 1e-2  # not the base without its adapters
    assert largest_gap(load_policy(_stage_ckpt(root, "dpo")).model) > 1e-2  # nor the trained DPO policy


def test_export_merges_the_adapters_into_a_model_that_generates_the_same(lora_run, tmp_path):
    root, captured = lora_run
    ctx = captured["dpo"]
    result = CliRunner().invoke(_app(), ["export", str(root), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip().splitlines()[-1]) == tmp_path / "merged"
    exported = load_policy(tmp_path / "merged")
    assert not has_adapters(exported.model)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    adapted = captured["policy"].model.eval()
    for sample in ctx.samples[:3]:
        inputs = ctx.encode(sample)

        def greedy(model):
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=16, min_new_tokens=16)
            return out[0, inputs["input_ids"].shape[1]:].tolist()

        assert greedy(exported.model) == greedy(adapted), sample.id
    # the destination is never overwritten
    again = CliRunner().invoke(_app(), ["export", str(root), "--out", str(tmp_path / "merged")])
    assert again.exit_code == 2 and "already exists" in again.output
    with pytest.raises(ValueError, match="not a veripo run directory"):
        export_run(tmp_path, tmp_path / "x")


def _app():
    from veripo.cli.main import app

    return app


def test_the_visual_feature_cache_counts_reach_the_stage_metrics(lora_run):
    """The tower is frozen: GRPO's training passes and DPO's reference and policy passes read the features its
    rollouts (and earlier passes) computed, and each metrics row says how many were hits and misses."""
    root, _ = lora_run
    for stage in ("grpo", "dpo"):
        rows = read_jsonl(next(root.glob(f"stages/*-{stage}/metrics.jsonl")))
        assert rows and all("vision_cache_hits" in r and "vision_cache_misses" in r for r in rows)
        assert sum(r["vision_cache_hits"] for r in rows) > 0
    # SFT's passes over the same questions computed them first
    assert sum(r["vision_cache_misses"] for path in root.glob("stages/*/metrics.jsonl") for r in read_jsonl(path)) > 0
