"""A whole GRPO step: veripo's recipe vs TRL's ``GRPOTrainer``, on image prompts, same tiny model.

One step = sample G responses for each of Q questions, score them, group advantages, the policy's
forward+backward over all Q*G responses, one optimizer step. Both sides get:

- the same model (``veripo.models.build_tiny``, random weights, fp32, saved once and loaded by both);
- the same Q questions per step (synthetic image questions), the same G, temperature 1, top-p 1, the same
  maximum completion length; no stop at ``</answer>`` on either side (TRL has none);
- the same reward: the run config's profile (``veripo.rewards.profiles.profile_for``) with ``digit_share`` added
  (the share of digits in a response, as tests/parallel's data-parallel test does): a random model never earns
  accuracy or format, so without it every group's rewards are equal, every advantage is 0, and veripo (which
  skips a step without a kept group) and TRL (which steps anyway) would do different work. No group filtering
  on either side (``grpo.filter_equal_groups=false``; TRL has none);
- the same number of trained tokens: the end-of-text logits are pushed to -1e4 on both sides (one forward hook
  on the shared model's ``lm_head``, so sampling and training see it alike), so every response runs to the
  maximum completion length and both sides train on Q x G x max-new-tokens response tokens per step;
- the same loss: clipped ratio, eps 0.2, token mean over the step's tokens (TRL ``loss_type="dapo"``,
  veripo ``loss_agg="token-mean"``), group std scaling, no KL (``beta=0`` / ``kl_coef=0``), one optimizer
  step per generation batch (``num_iterations=1``), AdamW at a constant lr, grad clip 1.0, no gradient
  checkpointing (TRL turns it on by default; it is turned off here);
- the same prompt tokens: TRL gets the images already resized by veripo's media settings, so its image
  processor keeps them as they are, and the prompt lengths are printed for both.

Why images and not video: TRL 1.16's GRPO trainer passes images to the processor but has no video path (it
extracts only ``image`` parts from the messages; ../shared/reference/DESIGN.md: "with video prompts its GRPO
silently trains without the video features"), so a video comparison would time TRL on a text-only prompt.

TRL needs a transformers ``ProcessorMixin``; ``Qwen2_5_VLProcessor`` cannot be built without torchvision
(its video processor), so ``ImageOnlyQwenProcessor`` below is the real transformers class with only that
lookup skipped: TRL runs transformers' own chat template and image code, not veripo's.

What is timed: veripo, ``run_grpo`` of ``--steps`` rollout batches after a one-batch warm-up run, divided by
the steps (it includes writing rollouts/metrics and one final checkpoint); TRL, ``on_step_begin`` to
``on_step_end`` of each ``trainer.train()`` step (its rollout, scoring and update all happen inside the step),
the first (warm-up) step dropped. Each side runs in a fresh process with one torch thread; CPU seconds
(``time.process_time``) are the robust figure on a loaded machine, wall seconds are printed beside them.

Like for like, checked: each side reports the optimizer steps and the response tokens it trained in its timed
steps (veripo from its metrics rows, TRL from its step counter and the completions scored after warm-up); the
script prints the table either way but refuses to print a ratio (exit status 1) unless both are equal.

    .venv/bin/python bench/bench_grpo_vs_trl.py                       # tiny model, Q=4, G=8, 96 tokens
    .venv/bin/python bench/bench_grpo_vs_trl.py --sizes tiny small    # also the 'small' tiny model
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
END_LOGIT = -1e4  # end-of-text logits on both sides: exp() is exactly 0 in fp32, and p * log p stays 0 (no NaN)


def digit_share(completion: str, sample: object) -> float:
    """The share of digits in a response: varies within a group even for a random model."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def bench_config(args: argparse.Namespace, extra: tuple[str, ...] = ()):
    """The demo config with the benchmark's settings (both sides read rewards and media from it), then ``extra``
    overrides."""
    from veripo.config import RunConfig, load
    from veripo.rewards.registry import REWARDS, register_reward

    if "digit_share" not in REWARDS:
        register_reward("digit_share")(digit_share)
    return load(RunConfig, DEMO_CONFIG, [
        f"rollout.num_generations={args.group}", f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.stop_at_answer=false", "rollout.temperature=1.0", "rollout.top_p=1.0",
        "rewards.extra=[digit_share]", "grpo.filter_equal_groups=false", "grpo.dynamic_sampling=false",
        f"grpo.rollout_batch_size={args.questions}", f"grpo.global_batch_size={args.questions * args.group}",
        f"grpo.lr={args.lr}", "grpo.loss_agg=token-mean", "grpo.kl_coef=0.0", "model.gradient_checkpointing=false",
        *extra,
    ])


def never_end(policy) -> None:
    """Push the end-of-text logits (veripo's stop ids, which include TRL's) to ``END_LOGIT`` in every forward, so
    every response on both sides is exactly max-new-tokens long."""
    from veripo.rollout.sampling import end_of_text_ids

    ends = end_of_text_ids(getattr(policy.model, "generation_config", None), policy.tokenizer)

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., ends] = END_LOGIT
        return logits

    policy.model.lm_head.register_forward_hook(hook)


def prepare(work: Path, size: str, n_samples: int) -> tuple[Path, Path]:
    """The tiny model and a synthetic image-question dataset under ``work`` (built once, reused)."""
    from veripo.data.synthetic import make_synthetic
    from veripo.models import build_tiny

    model_dir, data_dir = work / f"model-{size}", work / "images"
    if not (model_dir / "config.json").exists():
        build_tiny(model_dir, size=size, seed=0)
    if not (data_dir / "dataset.json").exists():
        make_synthetic(data_dir, n=n_samples, seed=7, kinds=["image"])
    return model_dir, data_dir


def load_questions(data_dir: Path) -> list:
    from veripo.data.loaders import load_samples

    return list(load_samples(data_dir).samples)


def _setup_worker(threads: int) -> None:
    import logging

    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)


def run_veripo(args: argparse.Namespace) -> dict:
    """Seconds per whole GRPO step of ``veripo.recipes.grpo.run_grpo``."""
    _setup_worker(args.threads)
    from rich.console import Console

    from veripo.data.jsonl import read_jsonl
    from veripo.models import load_policy
    from veripo.models.inputs import SampleEncoder
    from veripo.recipes.context import StageContext
    from veripo.recipes.grpo import run_grpo

    samples = load_questions(Path(args.data))
    policy = load_policy(Path(args.model))
    never_end(policy)
    stage_root = Path(args.work) / f"veripo-{args.size}-{time.time_ns()}"

    def stage_run(name: str, questions: list, batches: int) -> tuple[float, float, Path]:
        cfg = bench_config(args, (f"grpo.max_steps={batches}", f"grpo.save_every={batches + 1}"))
        stage = next(s for s in cfg.stages if s.kind == "grpo")
        encode = SampleEncoder(policy.processor, cfg.media, style=cfg.model.prompt, cache_dir=None)
        ctx = StageContext(cfg=cfg, stage=stage, index=0, stage_dir=stage_root / name, policy=policy,
                           samples=questions, encode=encode, console=Console(stderr=True, quiet=True),
                           show_progress=False)
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run_grpo(ctx)
        return time.perf_counter() - wall0, time.process_time() - cpu0, ctx.stage_dir

    per_step = args.questions * args.steps
    stage_run("warmup", samples[per_step:per_step + args.questions], 1)
    wall, cpu, stage_dir = stage_run("timed", samples[:per_step], args.steps)
    rows = [r for r in read_jsonl(stage_dir / "metrics.jsonl") if r["kind"] == "grpo"]
    rollouts = read_jsonl(stage_dir / "rollouts.jsonl")
    return {
        "wall_s": wall / args.steps, "cpu_s": cpu / args.steps, "steps": args.steps,
        "completion_len": statistics.fmean(r["response_tokens"] for r in rollouts),
        "prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in rollouts),
        "reward_mean": statistics.fmean(r["reward"] for r in rollouts),
        "optimizer_steps": len(rows), "trained_tokens": int(sum(r["trained_tokens"] for r in rows)),
        "advantage_abs_mean": statistics.fmean(abs(r["advantage"]) for r in rollouts),
    }


def image_only_processor(policy):
    """transformers' ``Qwen2_5_VLProcessor`` around the policy's tokenizer and image processor, built without
    its video processor (whose class lookup needs torchvision, absent here)."""
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None  # images only: TRL's GRPO never passes videos
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwenProcessor(image_processor=policy.processor.image_processor, tokenizer=policy.tokenizer,
                                  video_processor=None, chat_template=policy.tokenizer.chat_template)


def trl_dataset(samples: list, media, style: str):
    """TRL rows: the same user text as veripo's prompt, the image resized by veripo's media settings."""
    from datasets import Dataset
    from PIL import Image

    from veripo.data.media import load_image
    from veripo.models.prompts import PROMPT_STYLES

    rows = []
    for s in samples:
        if len(s.images) != 1 or s.video is not None:
            raise ValueError(f"sample {s.id!r}: the TRL comparison needs exactly one image and no video")
        pixels = load_image(s.images[0], min_pixels=media.min_pixels, max_pixels=media.max_pixels)
        rows.append({"prompt": [{"role": "user", "content": PROMPT_STYLES[style](s)}],
                     "image": Image.fromarray(pixels), "sample_id": s.id})
    return Dataset.from_list(rows)


def same_prompts(processor, dataset, samples: list, policy, cfg) -> float:
    """Check that TRL's processor turns each row into exactly veripo's prompt ids and image pixels; the mean
    prompt length. Raises when they differ (the comparison would not be like for like)."""
    import torch
    from trl.data_utils import prepare_multimodal_messages

    from veripo.models.inputs import SampleEncoder

    encode = SampleEncoder(policy.processor, cfg.media, style=cfg.model.prompt)
    lengths = []
    for row, sample in zip(dataset, samples):
        messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])  # what TRL does
        theirs = processor.apply_chat_template(conversation=[messages], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)
        ours = encode(sample)
        same_pixels = torch.equal(torch.as_tensor(theirs["pixel_values"]), ours["pixel_values"])
        if list(theirs["input_ids"][0]) != ours["input_ids"][0].tolist() or not same_pixels:
            raise RuntimeError(f"sample {sample.id}: TRL's prompt differs from veripo's (ids or pixels)")
        lengths.append(len(theirs["input_ids"][0]))
    return statistics.fmean(lengths)


def run_trl(args: argparse.Namespace) -> dict:
    """Seconds per ``GRPOTrainer`` step (generation, rewards, advantages, forward+backward, optimizer)."""
    _setup_worker(args.threads)
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from veripo.models import load_policy
    from veripo.rewards.profiles import profile_for

    cfg = bench_config(args)
    samples = load_questions(Path(args.data))
    by_id = {s.id: s for s in samples}
    policy = load_policy(Path(args.model))
    never_end(policy)
    processor = image_only_processor(policy)
    profile = profile_for(cfg.rewards)
    lengths: list[int] = []
    rewards: list[float] = []

    def veripo_reward(prompts, completions, completion_ids, sample_id, **_):
        lengths.extend(len(c) for c in completion_ids)
        scores = [profile.score(c[0]["content"] if isinstance(c, list) else c, by_id[i])["total"]
                  for c, i in zip(completions, sample_id, strict=True)]
        rewards.extend(scores)
        return scores

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def on_step_begin(self, *_, **__):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *_, **__):
            self.times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    per_step = args.questions * args.steps
    dataset = trl_dataset(samples[: per_step + args.questions], cfg.media, cfg.model.prompt)
    config = GRPOConfig(
        output_dir=str(Path(args.work) / f"trl-{args.size}-{time.time_ns()}"), use_cpu=True, bf16=False,
        per_device_train_batch_size=args.questions * args.group, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2, num_iterations=1,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, optim="adamw_torch",
        gradient_checkpointing=False, max_steps=args.steps + 1, save_strategy="no", report_to="none",
        logging_steps=1, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = GRPOTrainer(model=policy.model, reward_funcs=veripo_reward, args=config, train_dataset=dataset,
                          processing_class=processor, callbacks=[clock])
    prompt_tokens = same_prompts(processor, dataset, samples[:per_step], policy, cfg)
    trainer.train()
    timed = clock.times[1:]
    warmup = args.questions * args.group  # the first step's completions
    return {
        "wall_s": statistics.fmean(t[0] for t in timed), "cpu_s": statistics.fmean(t[1] for t in timed),
        "steps": len(timed), "completion_len": statistics.fmean(lengths[warmup:]),
        "prompt_tokens": prompt_tokens,
        "reward_mean": statistics.fmean(rewards[warmup:]),
        "optimizer_steps": trainer.state.global_step - 1,  # the warm-up step's is not timed
        "trained_tokens": int(sum(lengths[warmup:])),
        "advantage_abs_mean": group_advantage_abs_mean(rewards[warmup:], args.group),
    }


def group_advantage_abs_mean(rewards: list[float], group: int) -> float:
    """Mean |advantage| of consecutive groups of rewards (TRL scores a step's completions group by group)."""
    advantages = []
    for i in range(0, len(rewards), group):
        chunk = rewards[i : i + group]
        mean, std = statistics.fmean(chunk), statistics.stdev(chunk) if len(chunk) > 1 else 0.0
        advantages += [abs(r - mean) / (std + 1e-4) for r in chunk]
    return statistics.fmean(advantages)


def unequal_work(results: list[dict]) -> list[str]:
    """Why the two sides did not do the same work (empty: they did): optimizer steps or trained tokens."""
    problems = []
    for row in results:
        v, t = row["veripo"], row["trl"]
        for key in ("optimizer_steps", "trained_tokens"):
            if v[key] != t[key]:
                problems.append(f"{row['size']}: veripo {key} {v[key]} != TRL {t[key]}")
    return problems


WORKERS = {"veripo": run_veripo, "trl": run_trl}


def spawn(args: argparse.Namespace, side: str, size: str, model: Path, data: Path) -> dict:
    """One side in a fresh process (so neither inherits the other's allocator state or threads)."""
    cmd = [sys.executable, __file__, "--worker", side, "--size", size, "--model", str(model), "--data", str(data),
           "--work", args.work, "--questions", str(args.questions), "--group", str(args.group),
           "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps), "--lr", str(args.lr),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker ({size}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=["tiny", "small"])
    parser.add_argument("--questions", type=int, default=4, help="questions per step (Q)")
    parser.add_argument("--group", type=int, default=8, help="responses per question (G)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="maximum completion length (demo: 96)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    from rich.progress import Progress

    args.work = args.work or tempfile.mkdtemp(prefix="bench-grpo-trl-")
    results = []
    with Progress(transient=True) as bar:
        task = bar.add_task("GRPO step: veripo vs TRL", total=2 * len(args.sizes))
        for size in args.sizes:
            model, data = prepare(Path(args.work), size, args.questions * (args.steps + 1))
            row = {"size": size}
            for side in ("veripo", "trl"):
                bar.update(task, description=f"{side} ({size})")
                row[side] = spawn(args, side, size, model, data)
                bar.advance(task)
            results.append(row)
    print(f"Q={args.questions} questions x G={args.group} responses per step, max {args.max_new_tokens} new tokens, "
          f"{args.steps} timed steps after 1 warm-up, {args.threads} torch thread(s)\n")
    print("| model | side | prompt tokens | mean completion tokens | CPU s/step | wall s/step | optimizer steps | "
          "trained tokens | mean abs advantage |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        for side in ("veripo", "trl"):
            r = row[side]
            print(f"| {row['size']} | {side} | {r['prompt_tokens']:.0f} | {r['completion_len']:.1f} | "
                  f"{r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['optimizer_steps']} | {r['trained_tokens']} | "
                  f"{r['advantage_abs_mean']:.3f} |")
    problems = unequal_work(results)
    if problems:
        print("\nno ratio: the two sides did different work (" + "; ".join(problems) + ")")
        sys.exit(1)
    print("\n| model | TRL / veripo (CPU) | TRL / veripo (wall) |")
    print("|---|---|---|")
    for row in results:
        v, t = row["veripo"], row["trl"]
        print(f"| {row['size']} | {t['cpu_s'] / v['cpu_s']:.2f}x | {t['wall_s'] / v['wall_s']:.2f}x |")


if __name__ == "__main__":
    main()
