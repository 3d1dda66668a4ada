"""The plan's memory model against a real training step: the 22.5M "small" Qwen2.5-VL of
bench/bench_shared_prefix.py, one GRPO group (8 responses to a 16-frame 224 px video) with backward and an AdamW
step on CPU in fp32, measured as that benchmark measures (resident high-water mark above the loaded model, in a
fresh process: footprint_worker.py). The estimate (gradients + AdamW moments + activations) is within 30%, with
and without gradient checkpointing; and the visual-token arithmetic equals the processor's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veripo.models.footprint import ModelDims, activation_bytes, state_bytes, video_cost

WORKER = Path(__file__).with_name("footprint_worker.py")


def measure(spec: dict) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_within_30_percent_of_a_measured_training_step(checkpointing: bool):
    if not Path("/proc/self/status").exists():
        pytest.skip("resident-memory peaks need Linux /proc")
    spec = {"frames": 16, "side": 224, "group": 8, "response": 64, "checkpointing": checkpointing}
    out = measure(spec)
    dims = ModelDims.of(out["config"])
    assert dims.parameters == out["parameters"] == 22_492_416
    states = state_bytes(dims, dtype="float32", master_dtype="float32", world=1, strategy="single")
    assert states.masters == 0 and states.grads == 4 * dims.parameters and states.optimizer == 8 * dims.parameters
    act = activation_bytes(dims, prompt_tokens=out["prompt_tokens"], patches=out["patches"], rows=8,
                           response_tokens=64, dtype="float32")
    estimate = (states.grads + states.optimizer + (act.checkpointed if checkpointing else act.full)) / 2**20
    measured = out["peak_mib"]
    print(f"checkpointing={checkpointing}: estimated {estimate:.0f} MiB, measured {measured:.0f} MiB, "
          f"ratio {estimate / measured:.2f}")
    assert 0.7 <= estimate / measured <= 1.3
    # the gradients and moments the warm-up step left resident are what the state model says, give or take
    # the allocator's retained pages
    assert 0.7 <= (states.grads + states.optimizer) / 2**20 / out["state_mib"] <= 1.3


def test_video_tokens_follow_the_processor_arithmetic(tiny_model_dir):
    """The plan's visual tokens for a video equal what the real processor gives for frames resized by the data
    pipeline (same frames, same pixel budget)."""
    from veripo.data.media import smart_resize, video_frame_budget
    from veripo.models import load_policy
    from veripo.models.footprint import read_model_config

    dims = ModelDims.of(read_model_config(tiny_model_dir))
    frames, src_h, src_w, min_px, max_px = 8, 360, 640, 4 * 28 * 28, 64 * 28 * 28
    cost = video_cost(dims, frames=frames, height=src_h, width=src_w, min_pixels=min_px, max_pixels=max_px)
    h, w = smart_resize(src_h, src_w, min_pixels=min_px, max_pixels=video_frame_budget(frames, min_px, max_px))
    policy = load_policy(tiny_model_dir)
    text = policy.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True)
    inputs = policy.processor(text, videos=[np.zeros((frames, h, w, 3), np.uint8)], video_fps=2.0)
    assert cost.tokens == int((inputs["input_ids"] == policy.processor.video_token_id).sum())
    assert cost.patches == int(inputs["video_grid_thw"].prod())
