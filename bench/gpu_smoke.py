"""GPU smoke test: one GRPO phase and one DPO step of a randomly initialised Qwen2.5-VL-3B, timed per phase.

What it runs (the recipes' own pieces, no download, nothing but torch, transformers and veripo):
- a Qwen2.5-VL with the published Qwen2.5-VL-3B-Instruct dimensions (``SMOKE_MODEL`` in ``veripo.models.published_configs``, random weights,
  SDPA attention, gradient checkpointing), float32 master weights and AdamW state, bf16 compute
  (``veripo.parallel.Precision``: autocast through the strategy's passes and ``gathered_weights``);
- 2 questions, each with a synthetic 16-frame 448x448 video (2,048 visual tokens after the 2x2 merge);
- GRPO: 8 rollouts per question (``HFRolloutEngine``, prefill once, KV cache expanded to 8), the trainer's
  recomputed old log-probs (``grpo.recompute_old_logprobs`` is on for bf16 compute), and one optimizer step of
  the registered clipped policy loss over the 16 responses (shared prompt pass, micro-batches of 4);
- DPO: reference log-probs of one (chosen, rejected) pair per question, then one optimizer step of the
  registered sigmoid DPO loss.

Per phase it prints wall time, peak memory (GPU: ``max_memory_allocated``; CPU: the process's resident
high-water mark so far), tokens/s (prompt and response positions the phase ran through the language model)
and model FLOPs utilisation: ``2 x parameters x tokens`` per forward (language-model matmuls, lm_head included,
over the text positions; the vision tower's parameters over its patches), x3 for forward + backward; attention
scores and gradient checkpointing's recomputation are not counted (the usual "model FLOPs"). The peak is the
card's dense bf16 rate (``PEAK_BF16_FLOPS`` by device name, or ``--peak-tflops``).

    python bench/gpu_smoke.py                # one GPU; meant to finish in about 2 of the 4 minutes it is given
    python bench/gpu_smoke.py --tiny         # CPU, the tiny model and a 2-frame 56x56 video: seconds (tested)
    python bench/gpu_smoke.py --json out.json

Memory at the 3B size (fp32 masters): weights 15 GB + gradients 15 GB + AdamW 30 GB + the bf16 weight copies
autocast keeps (7.5 GB) + activations: meant to fit one 80 GB card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# The model: Qwen2.5-VL-3B-Instruct's published architecture (veripo.models.published_configs, which cites its
# config.json), random weights.
SMOKE_MODEL = "Qwen2.5-VL-3B-Instruct"
# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), by a substring of the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


@dataclass(frozen=True)
class Workload:
    """The work of one smoke run."""

    questions: int = 2
    rollouts: int = 8  # per question
    frames: int = 16
    side: int = 448  # frame width and height, pixels
    new_tokens: int = 128  # per rollout (random weights rarely stop early)
    micro_batch: int = 4  # responses per forward/backward
    lr: float = 1e-6


TINY = Workload(frames=2, side=56, new_tokens=4)


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    peak_bytes: int = 0
    tokens: int = 0
    flops: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def model_config(tokenizer: Any, tiny: bool) -> Any:
    """The 3B architecture (or veripo's tiny one) with the special-token ids of ``tokenizer``."""
    from veripo.models.tiny import SIZES, tiny_config
    from veripo.models.tokenizer import QWEN_SPECIAL_TOKENS

    if tiny:
        return tiny_config(SIZES["tiny"], tokenizer)
    from transformers import AutoConfig

    from veripo.models.published_configs import published_config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    fields = dict(published_config(SMOKE_MODEL))
    model_type = fields.pop("model_type")
    fields.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                  image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return AutoConfig.for_model(model_type, **fields)


def build_policy(tiny: bool, device: torch.device) -> tuple[Any, Any]:
    """(random model in float32 on ``device``, processor) with a locally trained tokenizer (no download)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from veripo.models.processor import VeripoProcessor
    from veripo.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(1536)
    config = model_config(tokenizer, tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation="sdpa",
                                                                dtype=torch.float32)
    model.generation_config.eos_token_id = [config.text_config.eos_token_id]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    processor = VeripoProcessor(tokenizer, Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=1280 * 28 * 28))
    return model.train(), processor


def prompts(processor: Any, work: Workload, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """One prompt per question through veripo's chat template and video patchifier, synthetic frames."""
    import numpy as np

    from veripo.data.records import Sample
    from veripo.models.prompts import encode_prompt

    out = []
    for q in range(work.questions):
        frames = np.random.default_rng(q).integers(0, 256, (work.frames, work.side, work.side, 3), dtype=np.uint8)
        sample = Sample(id=f"smoke-{q}", problem="What happens in the video?", problem_type="multiple choice",
                        answer="A", options=["A. a", "B. b", "C. c", "D. d"], data_type="video",
                        video="synthetic.mp4")
        encoded = encode_prompt(processor, sample, frames=frames, video_fps=2.0)
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encoded.items()})
    return out


def matmul_parameters(model: Any) -> tuple[int, int]:
    """(language-model parameters a text position's forward multiplies by: decoder layers and lm_head;
    vision-tower parameters a patch's forward multiplies by)."""
    layers = sum(p.numel() for p in model.model.language_model.layers.parameters())
    return layers + model.lm_head.weight.numel(), sum(p.numel() for p in model.model.visual.parameters())


@contextmanager
def measured(phase: Phase, device: torch.device) -> Iterator[Phase]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield phase
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        phase.peak_bytes = torch.cuda.max_memory_allocated(device)
    else:
        phase.peak_bytes = resident_high_water()
    phase.wall_s = time.perf_counter() - start


def resident_high_water() -> int:
    """The process's resident-set high-water mark (``VmHWM``), bytes; 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_smoke(tiny: bool, device: torch.device) -> tuple[list[Phase], dict[str, Any]]:
    from veripo.algos.advantages import group_advantages
    from veripo.algos.dpo import PairNorms, dpo_loss
    from veripo.algos.policy_loss import BatchNorms
    from veripo.config.schema import GRPOConfig
    from veripo.models.grouped_forward import backward_group, response_log_probs
    from veripo.parallel import ParallelStrategy, Precision
    from veripo.recipes.common import build_scheduler
    from veripo.recipes.grpo import group_policy_loss
    from veripo.rollout import HFRolloutEngine, SamplingParams

    work = TINY if tiny else Workload()
    model, processor = build_policy(tiny, device)
    strategy = ParallelStrategy(precision=Precision(torch.bfloat16, torch.float32))
    strategy.prepare(model)
    text_params, vision_params = matmul_parameters(model)
    inputs = prompts(processor, work, device)
    prompt_tokens = [int(p["input_ids"].shape[1]) for p in inputs]
    patches = [int(p["pixel_values_videos"].shape[0]) for p in inputs]
    vision_flops = 2.0 * vision_params * sum(patches)

    def forward_flops(responses: int) -> float:  # prompts once each, plus ``responses`` response positions
        return 2.0 * text_params * (sum(prompt_tokens) + responses) + vision_flops

    phases: list[Phase] = []
    engine = HFRolloutEngine(model, processor.tokenizer, max_batch_questions=work.questions)
    params = SamplingParams(num_generations=work.rollouts, temperature=1.0, top_p=1.0, max_new_tokens=work.new_tokens,
                            stop_strings=())
    with measured(Phase("grpo: sample 8 rollouts x 2 questions"), device) as phase, strategy.gathered_weights():
        groups = engine.generate(inputs, params, seeds=list(range(work.questions)))
    generated = sum(len(r.token_ids) for g in groups for r in g.responses)
    phase.tokens, phase.flops = sum(prompt_tokens) + generated, forward_flops(generated)
    phases.append(phase)

    batches = []  # per question: response ids, mask
    for g in groups:
        rows = [r.token_ids for r in g.responses]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, device=device)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, device=device)
            mask[i, : len(r)] = 1.0
        batches.append((ids, mask))
    with measured(Phase("grpo: trainer's old log-probs"), device) as phase, strategy.gathered_weights():
        old = [response_log_probs(model, p, ids, mask, micro_batch=work.micro_batch).log_probs
               for p, (ids, mask) in zip(inputs, batches)]
    phase.tokens, phase.flops = sum(prompt_tokens) + generated, forward_flops(generated)
    gap = max(float(((o[i] - torch.tensor(_padded_row(r.logprobs, o.shape[1]), device=device)).abs() * m[i]).max())
              for o, (_ids, m), g in zip(old, batches, groups) for i, r in enumerate(g.responses))
    phase.notes["sampler/trainer log-prob gap (max)"] = round(gap, 4)
    phases.append(phase)

    grpo = GRPOConfig(lr=work.lr)
    optimizer, _ = strategy.optimizer(work.lr, 0.0, grpo.max_grad_norm)
    scheduler = build_scheduler(optimizer, "constant", 0, 2)
    norms = BatchNorms(tokens=float(sum(float(m.sum()) for _, m in batches)),
                       sequences=float(sum(int((m.sum(-1) > 0).sum()) for _, m in batches)),
                       rows=float(sum(m.shape[0] for _, m in batches)), norm_constant=float(work.new_tokens))
    rewards = torch.rand(work.questions, work.rollouts, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    advantages = group_advantages(rewards, estimator="grpo").float().to(device)
    with measured(Phase("grpo: one optimizer step (16 responses)"), device) as phase:
        optimizer.zero_grad(set_to_none=True)
        for q, (p, (ids, mask)) in enumerate(zip(inputs, batches)):
            def loss_fn(logp, _entropy, rows, q=q, mask=mask):
                loss, _sums = group_policy_loss(logp, old[q][rows], advantages[q][rows], mask[rows], None, grpo, norms)
                return loss

            backward_group(model, p, ids, mask, loss_fn, micro_batch=work.micro_batch, with_entropy=True,
                           passes=strategy.passes)
        grad_norm, _ = strategy.step(optimizer, scheduler, grpo.max_grad_norm)
    phase.tokens, phase.flops = sum(prompt_tokens) + generated, 3 * forward_flops(generated)
    phase.notes["grad norm"] = round(grad_norm, 4)
    phases.append(phase)

    pairs = [(ids[:2], mask[:2]) for ids, mask in batches]  # rollout 0 chosen, rollout 1 rejected
    pair_tokens = sum(int(m.sum()) for _, m in pairs)
    with measured(Phase("dpo: reference log-probs (2 pairs)"), device) as phase, strategy.gathered_weights():
        reference = [(response_log_probs(model, p, ids, mask).log_probs * mask).sum(-1)
                     for p, (ids, mask) in zip(inputs, pairs)]
    phase.tokens, phase.flops = sum(prompt_tokens) + pair_tokens, forward_flops(pair_tokens)
    phases.append(phase)

    pair_norms = PairNorms(pairs=float(len(pairs)), chosen_tokens=float(sum(float(m[0].sum()) for _, m in pairs)))
    with measured(Phase("dpo: one optimizer step (2 pairs)"), device) as phase:
        optimizer.zero_grad(set_to_none=True)
        for p, (ids, mask), ref in zip(inputs, pairs, reference):
            def pair_loss(logp, _entropy, rows, mask=mask, ref=ref):
                sums = (logp * mask[rows]).sum(-1)
                return dpo_loss(sums[0:1], sums[1:2], ref[0:1], ref[1:2], beta=0.1, loss_type="sigmoid",
                                norms=pair_norms).loss

            backward_group(model, p, ids, mask, pair_loss, passes=strategy.passes)
        grad_norm, _ = strategy.step(optimizer, scheduler, 1.0)
    phase.tokens, phase.flops = sum(prompt_tokens) + pair_tokens, 3 * forward_flops(pair_tokens)
    phase.notes["grad norm"] = round(grad_norm, 4)
    phases.append(phase)

    setup = {"model": "tiny" if tiny else "Qwen2.5-VL-3B (published dimensions, random weights)",
             "parameters": sum(p.numel() for p in model.parameters()), "precision": strategy.precision.describe(),
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "prompt_tokens": prompt_tokens, "video_patches": patches, "generated_tokens": generated,
             "workload": work.__dict__}
    return phases, setup


def _padded_row(values: list[float], width: int) -> list[float]:
    return list(values) + [0.0] * (width - len(values))


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def table(phases: list[Phase], peak: float | None) -> str:
    lines = ["| phase | wall s | peak memory GiB | tokens/s | MFU | notes |", "|---|---|---|---|---|---|"]
    for p in phases:
        mfu = f"{p.flops / p.wall_s / peak:.1%}" if peak and p.wall_s > 0 else "n/a"
        notes = ", ".join(f"{k} {v}" for k, v in p.notes.items())
        lines.append(f"| {p.name} | {p.wall_s:.2f} | {p.peak_bytes / 2**30:.2f} | {p.tokens / max(p.wall_s, 1e-9):,.0f} "
                     f"| {mfu} | {notes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model and a small video on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu (--tiny: cpu)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak for MFU")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if not args.tiny and device.type != "cuda":
        parser.error("the full smoke test needs a GPU; use --tiny on the CPU")
    started = time.perf_counter()
    phases, setup = run_smoke(args.tiny, device)
    peak = peak_flops(device, args.peak_tflops)
    print(f"{setup['model']}: {setup['parameters'] / 1e9:.3f}B parameters, {setup['precision']}, on {setup['device']}; "
          f"prompts {setup['prompt_tokens']} tokens, video patches {setup['video_patches']}, "
          f"{setup['generated_tokens']} tokens sampled")
    print(table(phases, peak))
    total = time.perf_counter() - started
    print(f"total {total:.1f} s (model build included)")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "total_s": total, "peak_flops": peak,
                                         "phases": [p.__dict__ for p in phases]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
