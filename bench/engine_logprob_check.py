"""Does a rollout engine sample from the policy the trainer scores? Per-token log-probs of its responses against
the trainer's teacher-forced ones (``response_log_probs``), before and after a weight change and a sync: the
check that would lift the vLLM engine's "untested on GPU" mark (a stale or mis-mapped weight push, a wrong
placeholder expansion or position shows as a gap far above rounding).

    .venv/bin/python bench/engine_logprob_check.py --engine hf        # CPU, tiny model: checks the harness
    python bench/engine_logprob_check.py --engine vllm --device cuda --dtype bfloat16 [--model-dir DIR]

Prints one line per policy version (max and mean |gap| over the sampled tokens, tokens, generation seconds) and
exits 1 when a gap exceeds ``--tolerance`` (default 1e-4, for float32; in bfloat16 vLLM's and transformers'
kernels round differently, so record what the first run shows before choosing one). ``--temperature`` other than 1 checks vLLM's processed log-probs,
which also leave out the banned vision tokens' mass (veripo/rollout/vllm_engine.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veripo.config import ConfigError, MediaConfig, RolloutConfig  # noqa: E402
from veripo.data.loaders import load_samples  # noqa: E402
from veripo.data.synthetic import make_synthetic  # noqa: E402
from veripo.models import build_tiny, load_policy  # noqa: E402
from veripo.models.grouped_forward import response_log_probs  # noqa: E402
from veripo.models.inputs import SampleEncoder  # noqa: E402
from veripo.rollout import SamplingParams  # noqa: E402
from veripo.rollout.registry import check_engine_installed, make_engine  # noqa: E402


def logprob_gaps(model, prompts, groups, temperature: float) -> torch.Tensor:
    """|engine log-prob - trainer log-prob| of every sampled token, the trainer's from one teacher-forced pass."""
    gaps = []
    for prompt, group in zip(prompts, groups):
        lengths = [len(r.token_ids) for r in group.responses]
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        sampled = torch.zeros(ids.shape)
        for i, response in enumerate(group.responses):
            ids[i, : lengths[i]] = torch.tensor(response.token_ids)
            mask[i, : lengths[i]] = 1
            sampled[i, : lengths[i]] = torch.tensor(response.logprobs)
        device = next(model.parameters()).device
        trainer = response_log_probs(model, {k: v.to(device) for k, v in prompt.items()}, ids.to(device),
                                     mask.to(device), temperature=temperature).log_probs.float().cpu()
        gaps.append((sampled - trainer)[mask.bool()].abs())
    return torch.cat(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--model-dir", type=Path, help="a Qwen2.5-VL / Qwen2-VL directory (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    try:
        check_engine_installed(args.engine)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or build_tiny(Path(tmp) / "tiny", size="tiny", seed=0)
        policy = load_policy(model_dir, dtype=args.dtype, device=args.device)
        data = make_synthetic(Path(tmp) / "data", n=args.questions, seed=1, kinds=("video", "image", "text"),
                              size=56, frames=(4, 4))
        media = MediaConfig(max_frames=4, max_pixels=3136)
        encode = SampleEncoder(policy.processor, media, cache_dir=None)
        prompts = [{k: v.to(args.device) for k, v in encode(s).items()} for s in load_samples(data).samples]
        rollout = RolloutConfig(engine=args.engine, num_generations=args.generations, temperature=args.temperature,
                                max_new_tokens=args.max_new_tokens)
        engine = make_engine(policy, rollout, seed=0, dtype=args.dtype)
        params = SamplingParams(num_generations=args.generations, temperature=args.temperature, top_p=1.0,
                                max_new_tokens=args.max_new_tokens, seed=0)
        worst = 0.0
        for version in (0, 1):
            if version:  # an optimizer step's worth of change, then the sync the GRPO recipe does
                with torch.no_grad():
                    for p in policy.model.parameters():
                        p.add_(1e-2 * p.float().std().nan_to_num() * torch.randn_like(p))
            engine.sync_weights(policy.model, version)
            start = time.perf_counter()
            groups = engine.generate(prompts, params)
            seconds = time.perf_counter() - start
            engine.release()
            gaps = logprob_gaps(policy.model, prompts, groups, args.temperature)
            worst = max(worst, float(gaps.max()))
            print(f"{args.engine} policy version {version}: max |gap| {float(gaps.max()):.2e}, mean "
                  f"{float(gaps.mean()):.2e} over {gaps.numel()} tokens; generation {seconds:.2f} s")
    if worst > args.tolerance:
        print(f"FAIL: a log-prob gap of {worst:.2e} exceeds --tolerance {args.tolerance:.0e}")
        return 1
    print(f"ok: every gap within {args.tolerance:.0e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
