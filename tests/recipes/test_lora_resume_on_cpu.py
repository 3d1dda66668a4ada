"""A LoRA run (vision tower frozen) killed with SIGKILL mid-SFT, mid-GRPO, before DPO's first step and mid-DPO,
resumed each time, ends with the uninterrupted run's adapters, optimizer state, metrics, rollouts and pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume_on_cpu import CONFIG, _finish, _kill_and_resume, _records, _start

from veripo.models.adapters import ADAPTER_WEIGHTS

pytestmark = pytest.mark.slow

BASE_MODEL = "model: {build_tiny: tiny, device: cpu}"
assert BASE_MODEL in CONFIG
LORA_CONFIG = CONFIG.replace(BASE_MODEL, "model: {build_tiny: tiny, device: cpu, freeze: [vision]}\n"
                                         "lora: {enabled: true, rank: 4, alpha: 8.0}")


def _final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    stage = sorted((run / "stages").glob("*-dpo"))[0]
    ckpt = stage / "checkpoints" / json.loads((stage / "latest.json").read_text())["checkpoint"]
    assert not list(ckpt.glob("model*.safetensors")), "a LoRA checkpoint holds the adapters only"
    return load_file(str(ckpt / ADAPTER_WEIGHTS)), torch.load(ckpt / "optimizer.pt", weights_only=True)


def test_killed_and_resumed_lora_run_equals_uninterrupted(tmp_path: Path):
    (tmp_path / "cfg.yaml").write_text(LORA_CONFIG)
    clean = tmp_path / _finish(_start(["cfg.yaml", "output_dir=clean"], tmp_path))

    out = tmp_path / "killed"
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}"], tmp_path, out, (
        "*/stages/00-sft/checkpoints/ckpt-000001", "*/stages/01-grpo/checkpoints/ckpt-000001",
        "*/stages/03-dpo/reference_logps.json", "*/stages/03-dpo/checkpoints/ckpt-000002"))
    resumed = _finish(proc)
    assert kills >= 3, f"the run finished before most kill points ({kills} kills)"

    (a, opt_a), (b, opt_b) = _final_state(clean), _final_state(resumed)
    assert a.keys() == b.keys() and any(".lora_B." in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index, moments in opt_a["state"].items():
        for key, tensor in moments.items():
            assert torch.equal(tensor, opt_b["state"][index][key]), (index, key)
    for rel in ("stages/00-sft/metrics.jsonl", "stages/01-grpo/metrics.jsonl", "stages/01-grpo/rollouts.jsonl",
                "stages/02-verify/pairs.jsonl", "stages/03-dpo/metrics.jsonl"):
        assert _records(clean / rel) == _records(resumed / rel), rel
