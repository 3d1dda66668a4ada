"""GRPO policy forward+backward per group: shared prefix vs per sequence, on video prompts.

For each case (prompt:response about 4:1 and 16:1, G responses) it runs one GRPO group (clipped policy loss,
token-mean) through ``veripo.models.grouped_forward.backward_group`` both ways on a ~22M-parameter Qwen2.5-VL (the
"small" size of the rollout benchmark) and prints a Markdown table: best-of-``--repeats`` time, peak
memory, and the ratios. Time is reported as process CPU time (one torch thread, so it measures the work
done and is robust to other load on a shared machine) and as wall time.

    .venv/bin/python bench/bench_shared_prefix.py             # CPU, 1 thread; about 2 CPU-minutes
    .venv/bin/python bench/bench_shared_prefix.py --quick     # tiny model, short prompts; seconds

Peak memory on CPU: each (case, way) runs in a fresh worker process, which reads the kernel's resident-set
high-water mark (``VmHWM`` in /proc/self/status) after one forward+backward and subtracts the resident set
measured just before it (model, inputs and imports already loaded). A fresh process per measurement matters:
freed memory stays in the allocator and would hide a second run's peak. The figure is the extra memory of
one group's forward+backward: activations kept for backward, logits, gradients (the same for both ways).

The per-sequence way is what general RL trainers do: G rows ``[prompt, response]``, the vision tower and
the LLM prefill run G times. The shared prefix runs the prompt once (vision included) and the G responses
against its KV cache; gradients are equal (see tests/algos/test_logprobs_on_cpu.py).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "rollout"))

MODEL_SIZES = {
    "tiny": {
        "hidden": 128,
        "layers": 4,
        "heads": 4,
        "kv_heads": 2,
        "vision_hidden": 64,
        "vision_depth": 2,
        "patch_size": 14,
    },
    "small": {
        "hidden": 512,
        "layers": 6,
        "heads": 8,
        "kv_heads": 4,
        "vision_hidden": 256,
        "vision_depth": 4,
        "patch_size": 14,
    },
}
# name -> video (frames, side px) and the prompt:response ratio to aim for
CASES = {
    "4:1": {"frames": 8, "side": 168, "ratio": 4},
    "16:1": {"frames": 16, "side": 224, "ratio": 16},
}
QUICK_CASES = {
    "4:1": {"frames": 4, "side": 56, "ratio": 4},
    "16:1": {"frames": 8, "side": 112, "ratio": 16},
}
QUESTION = "What does the ball do?"


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (peak memory needs Linux)")


def worker(size: str, frames: int, side: int, ratio: int, group: int, shared: bool, repeats: int, threads: int) -> dict:
    """One (case, way) measurement in this process; returns times, peak memory and the loss."""
    import torch
    from tiny_vl import byte_tokenizer, tiny_model, video_prompt

    from veripo.models.grouped_forward import backward_group
    from veripo.algos.policy_loss import clipped_policy_loss

    torch.set_num_threads(threads)
    tokenizer = byte_tokenizer()
    model = tiny_model(tokenizer, **MODEL_SIZES[size]).train()
    prompt = video_prompt(tokenizer, model.config, QUESTION, frames=frames, side=side)
    prompt_len = prompt["input_ids"].shape[1]
    length = max(1, round(prompt_len / ratio))
    generator = torch.Generator().manual_seed(0)
    response_ids = torch.randint(0, 256, (group, length), generator=generator)
    response_mask = torch.ones(group, length)
    # A random model is near uniform: old log-probs near -log(vocab) keep ratios near 1, as in a first step.
    vocab = model.config.text_config.vocab_size
    old_log_probs = -math.log(vocab) + 0.1 * torch.randn(group, length, generator=generator)
    advantages = torch.randn(group, 1, generator=generator).expand(group, length)
    tokens = response_mask.sum()

    def loss_fn(log_probs, entropy, rows):
        out = clipped_policy_loss(log_probs, old_log_probs[rows], advantages[rows], response_mask[rows])
        return out.per_token_loss.sum() / tokens

    def step():
        model.zero_grad(set_to_none=False)  # gradient buffers persist across steps, as in training
        return backward_group(model, prompt, response_ids, response_mask, loss_fn, shared_prefix=shared).loss

    before = _resident_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    loss = step()
    times = [(time.perf_counter() - wall, time.process_time() - cpu)]
    peak = _resident_kib("VmHWM") - before
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    timed = times[1:] or times
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "prompt_tokens": prompt_len,
        "response_tokens": length,
        "seconds": min(w for w, _ in timed),
        "cpu_seconds": min(c for _, c in timed),
        "peak_mib": peak / 1024,
        "loss": float(loss),
    }


def measure(args: argparse.Namespace, case: dict, shared: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        json.dumps(dict(case, shared=shared)),
        "--size",
        args.size,
        "--group",
        str(args.group),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="small")
    parser.add_argument("--group", type=int, default=8, help="G responses per prompt")
    parser.add_argument("--repeats", type=int, default=1, help="timed steps after the first (memory) step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = work done)")
    parser.add_argument("--quick", action="store_true", help="tiny model and short prompts: a smoke run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(args.size, group=args.group, repeats=args.repeats, threads=args.threads, **spec)))
        return
    if args.quick:
        args.size, cases = "tiny", QUICK_CASES
    else:
        cases = CASES

    from rich.progress import Progress

    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("benchmarking", total=2 * len(cases))
        for name, case in cases.items():
            spec = {k: case[k] for k in ("frames", "side", "ratio")}
            per_sequence = measure(args, spec, shared=False)
            progress.advance(task)
            shared = measure(args, spec, shared=True)
            progress.advance(task)
            rows.append((name, case, per_sequence, shared))

    print(
        f"model: Qwen2.5-VL '{args.size}', {rows[0][2]['params_m']:.1f}M parameters, fp32, CPU, "
        f"{args.threads} thread(s); G={args.group}; times: best of {args.repeats} step(s) after a warm-up step; "
        "CPU s = process CPU time (robust to other load), wall s = elapsed\n"
    )
    print(
        "| case | video | prompt:response tokens | per-seq CPU s | shared CPU s | speed-up (CPU) "
        "| per-seq wall s | shared wall s | speed-up (wall) | per-seq peak MiB | shared peak MiB | memory ratio "
        "| loss diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, case, base, fast in rows:
        print(
            f"| {name} | {case['frames']} frames @ {case['side']} px | {base['prompt_tokens']}:{base['response_tokens']} "
            f"| {base['cpu_seconds']:.2f} | {fast['cpu_seconds']:.2f} | {base['cpu_seconds'] / fast['cpu_seconds']:.1f}x "
            f"| {base['seconds']:.2f} | {fast['seconds']:.2f} | {base['seconds'] / fast['seconds']:.1f}x "
            f"| {base['peak_mib']:.0f} | {fast['peak_mib']:.0f} | {base['peak_mib'] / max(fast['peak_mib'], 1e-9):.1f}x "
            f"| {abs(base['loss'] - fast['loss']):.1e} |"
        )


if __name__ == "__main__":
    main()
