"""Measure one real GRPO training step of the 22.5M "small" Qwen2.5-VL of bench/bench_shared_prefix.py on CPU, the
way that benchmark measures: in a fresh process, the resident-set high-water mark (VmHWM) above the resident set
with the model and inputs loaded. One warm-up step on a one-token response first allocates the gradients and
AdamW's moments (they are resident in every step after the first), then the measured step runs the real group:
G responses against a video prompt, the policy loss, backward and the AdamW step. Prints one JSON line.

    python tests/models/footprint_worker.py '{"frames": 16, "side": 224, "group": 8, "response": 64}'
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "rollout")]

# bench/bench_shared_prefix.py MODEL_SIZES["small"]
SMALL = {"hidden": 512, "layers": 6, "heads": 8, "kv_heads": 4, "vision_hidden": 256, "vision_depth": 4,
         "patch_size": 14}


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(spec: dict) -> dict:
    import torch
    from tiny_vl import byte_tokenizer, tiny_model, video_prompt

    from veripo.algos.policy_loss import clipped_policy_loss
    from veripo.models.grouped_forward import backward_group

    torch.set_num_threads(1)
    tokenizer = byte_tokenizer()
    model = tiny_model(tokenizer, **SMALL).train()
    if spec.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prompt = video_prompt(tokenizer, model.config, "What does the ball do?", frames=spec["frames"], side=spec["side"])
    group, length = spec["group"], spec["response"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (group, length), generator=gen)
    mask = torch.ones(group, length)
    old = -math.log(model.config.text_config.vocab_size) + 0.1 * torch.randn(group, length, generator=gen)
    adv = torch.randn(group, 1, generator=gen).expand(group, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(response_ids, response_mask, micro_batch):
        n = response_mask.sum()

        def loss_fn(logp, _entropy, rows):
            out = clipped_policy_loss(logp, old[rows, : logp.shape[1]], adv[rows, : logp.shape[1]], response_mask[rows])
            return out.per_token_loss.sum() / n

        optimizer.zero_grad(set_to_none=False)
        backward_group(model, prompt, response_ids, response_mask, loss_fn, micro_batch=micro_batch,
                       with_entropy=True)
        optimizer.step()

    loaded = resident_kib("VmRSS")
    step(ids[:1, :1], mask[:1, :1], None)  # warm-up: gradients and AdamW moments now exist
    warm = resident_kib("VmRSS")
    step(ids, mask, spec.get("micro_batch"))
    peak = resident_kib("VmHWM")
    vc = model.config.vision_config
    patches = (spec["frames"] // vc.temporal_patch_size) * (spec["side"] // vc.patch_size) ** 2
    return {"config": model.config.to_dict(), "prompt_tokens": int(prompt["input_ids"].shape[1]),
            "patches": patches, "parameters": sum(p.numel() for p in model.parameters()),
            "state_mib": (warm - loaded) / 1024, "peak_mib": (peak - loaded) / 1024}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
