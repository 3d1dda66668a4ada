from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from veripo.recipes.checkpoint import (
    Progress,
    latest_checkpoint,
    load_model_weights,
    load_progress,
    load_training_state,
    output_sizes,
    save_checkpoint,
    truncate_outputs,
)
from veripo.parallel import ParallelStrategy
from veripo.recipes.common import build_scheduler, derive_seed
from veripo.recipes.run_dir import RunDir


def _tiny_lm(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def build_optimizer(model, lr: float) -> torch.optim.Optimizer:
    """The AdamW a one-process run builds (``ParallelStrategy.optimizer``)."""
    strategy = ParallelStrategy()
    strategy.prepare(model)
    return strategy.optimizer(lr, 0.0, 0.0)[0]


def _step(model, opt, sched):
    ids = torch.arange(10).view(1, 10) % 64
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_checkpoint_round_trip_resumes_exactly(tmp_path: Path):
    run = RunDir.create(tmp_path, "t")
    stage = run.stage_dir(0, "grpo")
    a = _tiny_lm(0)
    opt_a = build_optimizer(a, 1e-2)
    sched_a = build_scheduler(opt_a, "cosine", 1, 10)
    _step(a, opt_a, sched_a)
    (stage / "rollouts.jsonl").write_text('{"a": 1}\n')
    save_checkpoint(stage, a, None, opt_a, sched_a, Progress(step=1, unit=1, outputs=output_sizes(stage, ["rollouts.jsonl"])))
    # work after the checkpoint that a kill interrupts
    with open(stage / "rollouts.jsonl", "a") as f:
        f.write('{"a": 2}\n{"a"')
    _step(a, opt_a, sched_a)

    # resume into a differently initialised model
    b = _tiny_lm(1)
    opt_b = build_optimizer(b, 1e-2)
    sched_b = build_scheduler(opt_b, "cosine", 1, 10)
    ckpt = latest_checkpoint(stage)
    assert ckpt is not None and ckpt.name == "ckpt-000001"
    load_model_weights(b, ckpt)
    load_training_state(ckpt, opt_b, sched_b)
    progress = load_progress(ckpt)
    truncate_outputs(stage, progress.outputs)
    assert (stage / "rollouts.jsonl").read_text() == '{"a": 1}\n'
    _step(b, opt_b, sched_b)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path):
    stage = RunDir.create(tmp_path, "t").stage_dir(1, "dpo")
    m = _tiny_lm(0)
    save_checkpoint(stage, m, None, None, None, Progress(unit=1))
    (stage / "checkpoints" / ".tmp-ckpt-000002").mkdir()  # a save killed half way
    assert latest_checkpoint(stage).name == "ckpt-000001"
    save_checkpoint(stage, m, None, None, None, Progress(unit=2))
    assert latest_checkpoint(stage).name == "ckpt-000002"
    assert not (stage / "checkpoints" / "ckpt-000001").exists()  # keep=1


def test_summary_entries_replace_by_index(tmp_path: Path):
    run = RunDir.create(tmp_path, "my run")
    assert run.root.name.startswith("my-run-")
    run.update_summary({"index": 1, "name": "b"})
    run.update_summary({"index": 0, "name": "a"})
    run.update_summary({"index": 1, "name": "b2"})
    data = json.loads(run.summary_path.read_text())
    assert [s["name"] for s in data["stages"]] == ["a", "b2"]


def test_derive_seed_is_stable_and_key_sensitive():
    assert derive_seed(0, "grpo", 3) == derive_seed(0, "grpo", 3)
    assert derive_seed(0, "grpo", 3) != derive_seed(0, "grpo", 4) != derive_seed(1, "grpo", 3)
    assert all(0 <= derive_seed(s, "k") < 2**63 for s in range(50))
