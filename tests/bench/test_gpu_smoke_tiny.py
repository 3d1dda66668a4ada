"""``bench/gpu_smoke.py``: its ``--tiny`` mode runs end to end on the CPU (so the script is known to work before a
GPU is lent), and its hard-coded Qwen2.5-VL-3B dimensions build the published model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_scripts import bench_script


@pytest.fixture
def smoke():
    return bench_script("gpu_smoke")


def test_tiny_smoke_runs_a_grpo_phase_and_a_dpo_step_in_bf16_over_fp32_masters(tmp_path, smoke):
    """About 6 s on one CPU thread."""
    out = tmp_path / "smoke.json"
    assert smoke.main(["--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    setup, phases = result["setup"], result["phases"]
    assert setup["precision"] == "bf16 compute, fp32 master weights and AdamW state"
    work = smoke.TINY
    assert 0 < setup["generated_tokens"] <= work.questions * work.rollouts * work.new_tokens
    assert [p["name"].split(":")[0] for p in phases] == ["grpo"] * 3 + ["dpo"] * 2
    for phase in phases:
        assert phase["wall_s"] > 0 and phase["tokens"] > 0 and phase["flops"] > 0
    # the sampler and the trainer are the same forward here: their log-probs agree
    assert phases[1]["notes"]["sampler/trainer log-prob gap (max)"] < 1e-3
    for step in (phases[2], phases[4]):
        assert math.isfinite(step["notes"]["grad norm"]) and step["notes"]["grad norm"] > 0


def test_the_published_3b_dimensions_build_a_3_75b_parameter_model(smoke):
    """3,754,622,976 parameters: the sum of the published config.json's shapes (the model page rounds it to 3.75B);
    built on the meta device, so nothing is allocated."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from veripo.models.tokenizer import train_tokenizer

    config = smoke.model_config(train_tokenizer(1536), tiny=False)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 3_754_622_976
    text, vision = smoke.matmul_parameters(model)
    assert vision == 668_684_288 and text + vision < 3_754_622_976 + 151_936 * 2048  # lm_head tied to embeddings
    assert model.config.text_config.num_hidden_layers == 36 and model.config.vision_config.depth == 32


def test_mfu_uses_the_cards_dense_bf16_peak(smoke):
    assert smoke.peak_flops(torch.device("cpu"), None) is None
    assert smoke.peak_flops(torch.device("cpu"), 500.0) == 500e12
    phase = smoke.Phase("x", wall_s=2.0, peak_bytes=2**30, tokens=1000, flops=989e12)
    assert "| 50.0% |" in smoke.table([phase], 989e12)  # 989 TFLOP in 2 s on a 989 TFLOP/s card
