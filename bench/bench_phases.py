"""Time per question of a DPO phase vs a GRPO phase on the same synthetic video questions (demo settings).

The VerIPO paper reports its DPO phase about 7x faster than a GRPO phase: DPO samples nothing, it trains on
preference pairs the Rollout-Aware Verifier builds from the GRPO phase's own rollouts. This script runs, in
one process, with one torch thread, the loop as ``veripo run`` does it:

1. warm start (not timed): the demo's SFT stage on the demo's training questions, so that the tiny model
   writes ``<think>/<answer>`` text the verifier can judge (and torch's kernels are warm);
2. GRPO phase (timed): ``veripo.recipes.grpo.run_grpo`` on ``--questions`` video questions with the demo's
   ``rollout``/``grpo`` settings (G=8, 96 new tokens, 8 questions per rollout batch, 2 optimizer steps each);
3. verify (timed, reported apart): ``veripo.recipes.verify.run_verify`` with the demo's rule judge turns that
   phase's ``rollouts.jsonl`` into ``pairs.jsonl``. If the demo settings give no pair at all (a tiny model
   with no good rollout), it is run again with ``verifier.reference_chosen=true`` (the sample's reference
   chain is the chosen side, the rollout the rejected one) and the table says so;
4. DPO phase (timed): ``veripo.recipes.dpo.run_dpo`` on those pairs with the demo's ``dpo`` settings
   (reference log-probs once, then one epoch), starting from the GRPO phase's policy as in the loop.

Per-question figures divide each phase's time by the same number of questions. CPU seconds
(``time.process_time``) are the robust figure on a shared machine; wall seconds are printed beside them.

    .venv/bin/python bench/bench_phases.py                    # 16 video questions; about 2-3 CPU-minutes
    .venv/bin/python bench/bench_phases.py --questions 8 --sft-epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


class Clock:
    """Wall and CPU seconds of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self) -> Self:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


class CheckpointClock:
    """Wraps a recipe module's ``save_checkpoint`` to add up its wall and CPU seconds (the phase times
    include them; the table shows how much of each phase was checkpointing)."""

    def __init__(self, module) -> None:
        self.module, self.original = module, module.save_checkpoint
        self.wall = self.cpu = 0.0
        self.calls = 0

    def __enter__(self) -> Self:
        def timed(*args, **kwargs):
            with Clock() as c:
                result = self.original(*args, **kwargs)
            self.wall, self.cpu, self.calls = self.wall + c.wall, self.cpu + c.cpu, self.calls + 1
            return result

        self.module.save_checkpoint = timed
        return self

    def __exit__(self, *_) -> None:
        self.module.save_checkpoint = self.original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16, help="video questions in the GRPO phase (multiple of 8)")
    parser.add_argument("--sft-epochs", type=int, default=None, help="warm-start epochs (default: the demo's)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="run folder parent (default: a temporary one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from rich.console import Console

    from veripo.config import RunConfig, load
    from veripo.data.jsonl import read_jsonl
    from veripo.models import build_tiny, load_policy
    from veripo.recipes import dpo as dpo_module
    from veripo.recipes import grpo as grpo_module
    from veripo.recipes.context import StageContext
    from veripo.recipes.dpo import run_dpo
    from veripo.recipes.grpo import run_grpo
    from veripo.recipes.run_dir import RunDir
    from veripo.recipes.sft import run_sft
    from veripo.recipes.sources import SampleStore
    from veripo.recipes.verify import run_verify

    transformers.logging.set_verbosity_error()
    console = Console(stderr=True)
    overrides = [f"grpo.rollout_batches={max(1, args.questions // 8)}", "grpo.rollout_batch_size=8"]
    if args.sft_epochs is not None:
        overrides.append(f"sft.epochs={args.sft_epochs}")
    cfg = load(RunConfig, DEMO_CONFIG, overrides)
    run = RunDir.create(args.work or tempfile.mkdtemp(prefix="bench-phases-"), "phases")
    build_tiny(run.root / "base-model", size=args.size, seed=cfg.seed)
    policy = load_policy(run.root / "base-model")
    store = SampleStore(cfg, run, console)
    encode = store.encoder(policy)
    stages = {s.name: s for s in (*cfg.stages, *cfg.loop)}
    grpo_stage = next(s for s in cfg.loop if s.kind == "grpo")  # the demo loop's video GRPO phase
    questions = store.load_all(grpo_stage.data)[: args.questions]
    if len(questions) < args.questions or any(q.video is None for q in questions):
        raise SystemExit(f"the demo's {grpo_stage.name} data has fewer than {args.questions} video questions")

    def context(index: int, name: str, samples: list, stage=None, run_cfg=cfg, **inputs) -> StageContext:
        stage = stage or stages[name]
        return StageContext(cfg=run_cfg, stage=stage, index=index, stage_dir=run.stage_dir(index, f"{name}-{index}"),
                            policy=policy, samples=samples, encode=encode, console=console, inputs=inputs)

    sft = run_sft(context(0, "sft", store.load_all(cfg.data)))
    console.print(f"warm start: {sft.steps} SFT steps")
    with CheckpointClock(grpo_module) as grpo_saves, Clock() as grpo_clock:
        grpo = run_grpo(context(1, grpo_stage.name, questions, stage=grpo_stage))
    rollouts_path = grpo.outputs["rollouts.jsonl"]
    rollouts = read_jsonl(rollouts_path)

    verify_note = "demo verifier settings (rule judge, at most 2 pairs per question)"
    with Clock() as verify_clock:
        verified = run_verify(context(2, "verify", questions, rollouts=rollouts_path))
    if not read_jsonl(verified.outputs["pairs"]):
        verify_note = ("the demo settings gave no pair (no good rollout from the tiny model); rerun with "
                       "verifier.reference_chosen=true: the sample's reference chain is chosen")
        fallback = load(RunConfig, DEMO_CONFIG, [*overrides, "verifier.reference_chosen=true"])
        with Clock() as verify_clock:
            verified = run_verify(context(3, "verify", questions, run_cfg=fallback, rollouts=rollouts_path))
    pairs = read_jsonl(verified.outputs["pairs"])
    if not pairs:
        raise SystemExit("the verifier built no pair even with reference_chosen: nothing to time for DPO")
    with CheckpointClock(dpo_module) as dpo_saves, Clock() as dpo_clock:
        dpo = run_dpo(context(4, "pair-fast-align", questions, pairs=verified.outputs["pairs"]))

    n = len(questions)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p["pair_type"]] = kinds.get(p["pair_type"], 0) + 1
    print(f"{n} video questions, G={cfg.rollout.num_generations}, max {cfg.rollout.max_new_tokens} new tokens, "
          f"{args.size} model, {args.threads} torch thread(s)")
    print(f"GRPO phase: {len(rollouts)} rollouts, {grpo.steps} optimizer steps; mean response "
          f"{sum(r['response_tokens'] for r in rollouts) / max(1, len(rollouts)):.1f} tokens, accuracy "
          f"{sum(r['rewards'].get('accuracy', 0.0) for r in rollouts) / max(1, len(rollouts)):.3f}")
    print(f"verify: {len(pairs)} pairs {kinds}; {verify_note}")
    print(f"DPO phase: {dpo.numbers.get('pairs')} pairs, {dpo.steps} optimizer steps (reference log-probs included)\n")
    print("| phase | CPU s | wall s | CPU s / question | wall s / question | of which checkpoints (CPU s, saves) |")
    print("|---|---|---|---|---|---|")
    for name, c, saves in (("GRPO", grpo_clock, grpo_saves), ("verify (rule judge)", verify_clock, None),
                           ("DPO", dpo_clock, dpo_saves)):
        share = f"{saves.cpu:.2f} ({saves.calls})" if saves else "-"
        print(f"| {name} | {c.cpu:.2f} | {c.wall:.2f} | {c.cpu / n:.3f} | {c.wall / n:.3f} | {share} |")
    print(f"\nGRPO / DPO per question: {grpo_clock.cpu / dpo_clock.cpu:.1f}x (CPU), "
          f"{grpo_clock.wall / dpo_clock.wall:.1f}x (wall); GRPO / (verify + DPO): "
          f"{grpo_clock.cpu / (verify_clock.cpu + dpo_clock.cpu):.1f}x (CPU); without checkpoint saving: "
          f"{(grpo_clock.cpu - grpo_saves.cpu) / (dpo_clock.cpu - dpo_saves.cpu):.1f}x (CPU)")

if __name__ == "__main__":
    main()
