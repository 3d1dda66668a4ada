"""Time per question of a DPO phase vs a GRPO phase on the same synthetic video questions (demo settings).

The VerIPO paper reports its DPO phase about 7x faster than a GRPO phase: DPO samples nothing, it trains on
preference pairs the Rollout-Aware Verifier builds from the GRPO phase's own rollouts. This script runs, in
one process, with one torch thread, the loop as ``veripo run`` does it:

1. warm start (not timed): the demo's SFT stage on the demo's training questions, so that the tiny model
   writes ``<think>/<answer>`` text the verifier can judge (and torch's kernels are warm);
2. GRPO phase (timed): ``veripo.recipes.grpo.run_grpo`` on ``--questions`` video questions with the demo's
   ``rollout``/``grpo`` settings (G=8, 96 new tokens, 8 questions per rollout batch, 2 optimizer steps each);
3. verify (timed, reported apart): ``veripo.recipes.verify.run_verify`` with the demo's rule judge turns that
   phase's ``rollouts.jsonl`` into ``pairs.jsonl``, twice: with the demo's verifier settings, and with
   ``verifier.reference_chosen=true`` (a group with no good rollout gets the sample's reference chain as
   the chosen side), which gives every question up to ``max_pairs_per_question`` pairs: the most DPO work
   these rollouts can make. A tiny model has few good rollouts, so the demo settings give few pairs;
4. DPO phase (timed), once per pair set: ``veripo.recipes.dpo.run_dpo`` with the demo's ``dpo`` settings
   (reference log-probs once, then one epoch), each starting from the GRPO phase's policy as in the loop.

Per-question figures divide each phase's time by the same number of questions. CPU seconds
(``time.process_time``) are the robust figure on a shared machine; wall seconds are printed beside them.

    .venv/bin/python bench/bench_phases.py                    # 16 video questions; about 2-3 CPU-minutes
    .venv/bin/python bench/bench_phases.py --questions 8 --sft-epochs 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
# How the DPO phase's pairs are built from the GRPO phase's rollouts: the demo's verifier settings, and the
# same with the sample's reference chain as the chosen side of groups with no good rollout (every question
# then gives up to max_pairs_per_question pairs, the most DPO work these rollouts can make).
PAIR_SETTINGS = {
    "demo pairs": [],
    "reference-chosen pairs": ["verifier.reference_chosen=true"],
}


class Clock:
    """Wall and CPU seconds of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self) -> Self:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


class CheckpointClock:
    """Adds up the wall and CPU seconds of ``save_checkpoint`` calls made by the recipe modules (the phase
    times include them; the table shows how much of each phase was checkpointing). The name is replaced in
    every module that imported it (the recipes call it through ``veripo.recipes.stage_loop``)."""

    def __init__(self, *modules) -> None:
        self.originals = {m: m.save_checkpoint for m in modules if hasattr(m, "save_checkpoint")}
        if not self.originals:
            raise RuntimeError("no recipe module calls save_checkpoint: update bench_phases.CheckpointClock")
        self.wall = self.cpu = 0.0
        self.calls = 0

    def __enter__(self) -> Self:
        def wrap(original):
            def timed(*args, **kwargs):
                with Clock() as c:
                    result = original(*args, **kwargs)
                self.wall, self.cpu, self.calls = self.wall + c.wall, self.cpu + c.cpu, self.calls + 1
                return result

            return timed

        for module, original in self.originals.items():
            module.save_checkpoint = wrap(original)
        return self

    def __exit__(self, *_) -> None:
        for module, original in self.originals.items():
            module.save_checkpoint = original


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
    from veripo.recipes import stage_loop as loop_module
    from veripo.recipes.context import StageContext
    from veripo.recipes.dpo import run_dpo
    from veripo.recipes.grpo import run_grpo
    from veripo.recipes.run_dir import RunDir
    from veripo.recipes.sft import run_sft
    from veripo.recipes.sources import SampleStore
    from veripo.recipes.verify import run_verify

    transformers.logging.set_verbosity_error()
    console = Console(stderr=True)
    overrides = [f"grpo.max_steps={max(1, args.questions // 8)}", "grpo.rollout_batch_size=8"]  # 1 step per batch
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
    with CheckpointClock(loop_module) as grpo_saves, Clock() as grpo_clock:
        grpo = run_grpo(context(1, grpo_stage.name, questions, stage=grpo_stage))
    rollouts_path = grpo.outputs["rollouts.jsonl"]
    rollouts = read_jsonl(rollouts_path)

    start_weights = copy.deepcopy(policy.model.state_dict())  # both DPO runs start from the GRPO policy
    runs = []
    for k, (label, extra) in enumerate(PAIR_SETTINGS.items()):
        run_cfg = load(RunConfig, DEMO_CONFIG, [*overrides, *extra])
        with Clock() as verify_clock:
            verified = run_verify(context(2 + 2 * k, "verify", questions, run_cfg=run_cfg, rollouts=rollouts_path))
        pairs = read_jsonl(verified.outputs["pairs"])
        if not pairs:
            runs.append((label, pairs, verify_clock, None, None, None))
            continue
        policy.model.load_state_dict(start_weights)
        with CheckpointClock(loop_module) as dpo_saves, Clock() as dpo_clock:
            dpo = run_dpo(context(3 + 2 * k, "pair-fast-align", questions, run_cfg=run_cfg,
                                  pairs=verified.outputs["pairs"]))
        runs.append((label, pairs, verify_clock, dpo, dpo_clock, dpo_saves))

    n = len(questions)
    print(f"{n} video questions, G={cfg.rollout.num_generations}, max {cfg.rollout.max_new_tokens} new tokens, "
          f"{args.size} model, {args.threads} torch thread(s), warm start {sft.steps} SFT steps")
    print(f"GRPO phase: {len(rollouts)} rollouts, {grpo.steps} optimizer steps; mean response "
          f"{sum(r['response_tokens'] for r in rollouts) / max(1, len(rollouts)):.1f} tokens, accuracy "
          f"{sum(r['rewards'].get('accuracy', 0.0) for r in rollouts) / max(1, len(rollouts)):.3f}\n")
    print("| phase | pairs | optimizer steps | CPU s | wall s | CPU s / question | wall s / question | "
          "of which checkpoints (CPU s, saves) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| GRPO | - | {grpo.steps} | {grpo_clock.cpu:.2f} | {grpo_clock.wall:.2f} | {grpo_clock.cpu / n:.3f} | "
          f"{grpo_clock.wall / n:.3f} | {grpo_saves.cpu:.2f} ({grpo_saves.calls}) |")
    for label, pairs, verify_clock, dpo, dpo_clock, dpo_saves in runs:
        kinds = ", ".join(f"{kind} {sum(p['pair_type'] == kind for p in pairs)}"
                          for kind in sorted({p["pair_type"] for p in pairs}))
        print(f"| verify, {label} | {len(pairs)} ({kinds}) | - | {verify_clock.cpu:.2f} | {verify_clock.wall:.2f} | "
              f"{verify_clock.cpu / n:.3f} | {verify_clock.wall / n:.3f} | - |")
        if dpo is None:
            print(f"| DPO, {label} | 0 | - | not run: no pairs | | | | |")
            continue
        print(f"| DPO, {label} | {len(pairs)} | {dpo.steps} | {dpo_clock.cpu:.2f} | {dpo_clock.wall:.2f} | "
              f"{dpo_clock.cpu / n:.3f} | {dpo_clock.wall / n:.3f} | {dpo_saves.cpu:.2f} ({dpo_saves.calls}) |")
    print()
    for label, pairs, verify_clock, _, dpo_clock, dpo_saves in runs:
        if dpo_clock is None:
            continue
        print(f"GRPO / DPO per question, {label}: {grpo_clock.cpu / dpo_clock.cpu:.1f}x (CPU), "
              f"{grpo_clock.wall / dpo_clock.wall:.1f}x (wall); GRPO / (verify + DPO): "
              f"{grpo_clock.cpu / (verify_clock.cpu + dpo_clock.cpu):.1f}x (CPU); without checkpoint saving: "
              f"{(grpo_clock.cpu - grpo_saves.cpu) / (dpo_clock.cpu - dpo_saves.cpu):.1f}x (CPU); "
              f"DPO CPU s per pair {dpo_clock.cpu / len(pairs):.3f}")

if __name__ == "__main__":
    main()
