"""Sampling benchmark: prefill-once `HFRolloutEngine` vs `model.generate(num_return_sequences=G)`.

For each case (model size x video prompt) it samples G responses of exactly `--new-tokens` tokens with both
ways (end-of-text is masked for both, so lengths match) and prints the best-of-`--repeats` CPU and wall times
and their ratios as a Markdown table, plus a greedy check that both ways produce the same tokens.

    .venv/bin/python bench/bench_sampling.py            # CPU, 1 thread; a few minutes
    .venv/bin/python bench/bench_sampling.py --quick    # tiny model only, a few seconds

`generate` already runs the vision tower once for the G copies; what prefill-once saves is the G-fold LLM
prefill (and the G-fold prompt attention mask/positions bookkeeping), so the gain grows with prompt length.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "rollout"))

from tiny_vl import byte_tokenizer, tiny_model, video_prompt

from veripo.rollout import HFRolloutEngine, SamplingParams

MODEL_SIZES = {
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2, patch_size=14),
    "small": dict(hidden=512, layers=6, heads=8, kv_heads=4, vision_hidden=256, vision_depth=4, patch_size=14),
}
PROMPTS = {"8f@112px": dict(frames=8, side=112), "16f@224px": dict(frames=16, side=224)}


def best_times(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Best (CPU seconds, wall seconds) of each function over `repeats` runs after a warm-up.

    CPU time (`time.process_time`, all threads of this process) is the work done and barely moves when
    other processes share the machine; wall time does. The functions alternate within every repeat so
    that outside load hits both ways alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return {name: (min(c for c, _ in t), min(w for _, w in t)) for name, t in times.items()}


def run_case(model, tokenizer, prompt, G: int, new_tokens: int, repeats: int) -> dict:
    engine = HFRolloutEngine(model, tokenizer)
    eos = engine.eos_token_ids

    def no_eos(module, inputs, output):  # both ways decode exactly `new_tokens` tokens
        output[..., eos] = float("-inf")
        return output

    handle = model.lm_head.register_forward_hook(no_eos)
    sample = SamplingParams(G, temperature=1.0, top_p=0.9, max_new_tokens=new_tokens, stop_strings=(), seed=0)
    hf_kwargs = dict(max_new_tokens=new_tokens, suppress_tokens=engine.banned_token_ids, eos_token_id=eos)
    try:
        with torch.no_grad():
            best = best_times({
                "engine": lambda: engine.generate([prompt], sample),
                "hf": lambda: model.generate(**prompt, do_sample=True, temperature=1.0, top_p=0.9, top_k=0,
                                             num_return_sequences=G, **hf_kwargs),
            }, repeats)
            greedy = SamplingParams(1, 1.0, 1.0, new_tokens, stop_strings=(), greedy=True)
            ours = engine.generate([prompt], greedy)[0].responses[0].token_ids
            theirs = model.generate(**prompt, do_sample=False, **hf_kwargs)[0, prompt["input_ids"].shape[1]:].tolist()
    finally:
        handle.remove()
    return {"engine": best["engine"], "hf": best["hf"], "same_greedy": ours == theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", "-G", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, short prompt only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rich.progress import Progress

    tokenizer = byte_tokenizer()
    cases = [(s, p) for s in MODEL_SIZES for p in PROMPTS]
    if args.quick:
        cases = [("tiny", "8f@112px")]
    rows = []
    with Progress() as progress:
        task = progress.add_task("sampling benchmark", total=len(cases))
        for size, prompt_name in cases:
            model = tiny_model(tokenizer, **MODEL_SIZES[size])
            prompt = video_prompt(tokenizer, model.config, "What happens in the video? Think, then answer.",
                                  **PROMPTS[prompt_name])
            result = run_case(model, tokenizer, prompt, args.generations, args.new_tokens, args.repeats)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rows.append((size, params, prompt_name, prompt["input_ids"].shape[1], result))
            progress.advance(task)

    G, T = args.generations, args.new_tokens
    print(f"\nG={G}, {T} new tokens each, top_p=0.9, torch {torch.__version__}, {args.threads} thread(s), "
          f"best of {args.repeats}\n")
    print("| model | params | video | prompt tokens | engine CPU s | generate CPU s | speed-up (CPU) "
          "| engine wall s | generate wall s | speed-up (wall) | same greedy tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, params, prompt_name, P, r in rows:
        (ec, ew), (hc, hw) = r["engine"], r["hf"]
        print(f"| {size} | {params:.1f}M | {prompt_name} | {P} | {ec:.2f} | {hc:.2f} | {hc / ec:.2f}x "
              f"| {ew:.2f} | {hw:.2f} | {hw / ew:.2f}x | {'yes' if r['same_greedy'] else 'NO'} |")


if __name__ == "__main__":
    main()
