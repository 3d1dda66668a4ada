"""A GRPO stage with ``rollout.engine: vllm`` runs end to end with the fake vLLM (tests/rollout/fake_vllm.py):
before every rollout batch the engine is woken and synced, so vLLM samples from exactly the policy the last
optimizer step left, and it is put to sleep while the policy trains. Without vLLM installed, ``veripo run``
with that engine stops with one line naming the extra."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.rollout.fake_vllm import FakeLLM, FakeSamplingParams
from veripo.cli.main import app
from veripo.config import DataSource, RunConfig, Stage, load
from veripo.data.jsonl import read_jsonl
from veripo.data.synthetic import make_synthetic
from veripo.recipes.veripo import run
from veripo.rollout import vllm_engine


@pytest.mark.slow
def test_a_grpo_stage_on_the_vllm_engine_samples_from_the_current_policy(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from veripo.models import load_policy

    llms: list[FakeLLM] = []

    def fake_load_llm(model_dir, *, temperature, **_):
        policy = load_policy(model_dir, device="cpu")
        llms.append(FakeLLM(policy.model, policy.tokenizer, logprobs_mode=vllm_engine.logprobs_mode(temperature)))
        return llms[-1], FakeSamplingParams

    checked: list[int] = []
    generate = vllm_engine.VLLMRolloutEngine.generate

    def generate_from_the_current_policy(self, prompts, params, seeds=None):
        theirs = dict(self.llm.model.named_parameters())
        assert all(torch.equal(theirs[name], p) for name, p in self.model.named_parameters()), "stale vLLM weights"
        checked.append(self.synced_version)
        return generate(self, prompts, params, seeds)

    monkeypatch.setattr(vllm_engine, "check_installed", lambda: None)
    monkeypatch.setattr(vllm_engine, "load_llm", fake_load_llm)
    monkeypatch.setattr(vllm_engine.VLLMRolloutEngine, "generate", generate_from_the_current_policy)

    data = make_synthetic(tmp_path / "data", n=4, seed=3, kinds=("video", "text"), frames=(4, 4), size=56)
    cfg = load(RunConfig, None, [
        f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny", "model.device=cpu", "media.max_frames=4",
        "media.max_pixels=3136", "rollout.engine=vllm", "rollout.num_generations=2", "rollout.max_new_tokens=6",
        "rollout.batch_questions=1", "grpo.lr=1e-2", "grpo.rollout_batch_size=2", "grpo.global_batch_size=4",
        "grpo.rollout_batches=2",
    ])
    cfg = dataclasses.replace(cfg, data=(DataSource(path=str(data)),), stages=(Stage(name="grpo", kind="grpo"),))
    root = run(cfg, show_progress=False).root

    rollouts = read_jsonl(root / "stages" / "00-grpo" / "rollouts.jsonl")
    assert len(rollouts) == 2 * 2 * 2
    assert checked == [0, 0, 1, 1]  # two questions per batch, one engine call each; one step per batch
    (llm,) = llms
    unit = ["wake_up['weights']", "apply_model", "wake_up['kv_cache']", "reset_prefix_cache", "generate", "generate",
            "sleep2"]
    assert llm.calls == unit + unit
    assert any("multi_modal_data" in r for r in llm.requests) and any("multi_modal_data" not in r for r in llm.requests)


def test_veripo_run_on_the_vllm_engine_without_vllm_is_one_line_and_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("typer")
    if vllm_engine.importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    result = CliRunner().invoke(app, ["run", f"output_dir={tmp_path / 'runs'}", "model.build_tiny=tiny",
                                      "rollout.engine=vllm", "stages=[{name: g, kind: grpo}]"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'veripo[vllm]'" in lines[0] and "rollout.engine" in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_the_vllm_engine_with_weight_sharding_is_refused_by_the_config_check() -> None:
    from veripo.config import ConfigError

    with pytest.raises(ConfigError, match=r"'stages\[0\]\.rollout\.engine': vllm with weight sharding"):
        load(RunConfig, None, ["distributed.shard_weights=true", "rollout.engine=vllm",
                               "stages=[{name: g, kind: grpo}]"])
    load(RunConfig, None, ["distributed.shard_weights=true", "stages=[{name: g, kind: grpo}]"])  # hf: fine
