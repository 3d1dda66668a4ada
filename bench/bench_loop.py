"""The whole demo loop's phases, timed, with the visual feature cache on and off, printed as ratios in one run.

Grown out of ``bench_phases.py`` (which times a DPO phase against a GRPO phase). In one process, with one torch
thread, from the same starting weights for every setting, this runs the demo loop's video part as ``veripo run``
does it (``configs/demo.yaml`` with overrides; the vision tower frozen, ``model.freeze=[vision]``):

    held-out eval -> video GRPO phase -> held-out eval -> verify -> DPO phase -> held-out eval

once per setting: ``cache off`` (``model.vision_cache=false``) and ``cache on``; with ``--budget`` also ``cache
on + token budget`` where the config has ``grpo.max_tokens_per_micro_batch`` (skipped with a message where it
does not). Phase times come from the phases' own functions, timed where the recipes call them: rollout
(``RolloutEngine.generate``), score (``ScoringProfile.score_group``), policy update
(``StageLoop.optimizer_step``, GRPO's and DPO's), verify (``run_verify``) and its judge
(``veripo.verifier.run._judge_in_batches``), DPO (``run_dpo``, reference log-probs included) and eval
(``evaluate_stage``). Tokens per second: rollout = prompt + generated tokens per second of generation; GRPO
update = each group's prompt once plus its responses; DPO = chosen + rejected response tokens plus each
question's prompt once; eval = prompt + generated tokens. VerIPO's claim is checked as cost: the verify+DPO
phase's time against the GRPO phase it follows, and the held-out inconsistency rate each removes per second.
The model is randomly initialised (no warm start, to stay within minutes): its responses rarely have the
``<think>/<answer>`` form the judge needs, so the inconsistency figures may read "n/a (nothing judged)"; the
times are the result. Before any setting, not timed: every prompt is decoded and patchified once (all settings
read the same tensors) and the whole loop runs once on one question with 2-token responses, so that lazy imports
and first calls are not charged to the first setting.

    .venv/bin/python bench/bench_loop.py                  # small model, 16 frames of 224 px (issue 27's target)
    .venv/bin/python bench/bench_loop.py --tiny           # seconds: tiny model, 4 frames of 56 px (the test)
    .venv/bin/python bench/bench_loop.py --json out.json  # the table's numbers as JSON too
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
BUDGET_KEY = "max_tokens_per_micro_batch"
TOP = ("eval before", "GRPO", "eval after GRPO", "verify", "DPO", "eval after DPO")  # the loop's phases, in order  # the token-budget micro-batches of issue 27 part 2 (another branch)


@dataclasses.dataclass(frozen=True)
class Workload:
    size: str
    frames: int
    side: int
    questions: int
    rollout_batches: int
    new_tokens: int
    eval_items: int


FULL = Workload(size="small", frames=16, side=224, questions=4, rollout_batches=2, new_tokens=32, eval_items=4)
TINY = Workload(size="tiny", frames=4, side=56, questions=2, rollout_batches=2, new_tokens=8, eval_items=2)


class PhaseTimes:
    """Wall and CPU seconds per ``phase/part``: ``with times.phase("grpo")`` sets the phase; the parts are
    module attributes replaced by timed wrappers for as long as ``times.timing()`` lasts."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, int] = defaultdict(int)
        self.current = "-"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before, self.current = self.current, name
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu
            self.current = before

    def wrap(self, part: str, original: Any, count_tokens: Any = None) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            result = original(*args, **kwargs)
            key = f"{self.current}/{part}"
            self.wall[key] += time.perf_counter() - wall
            self.cpu[key] += time.process_time() - cpu
            if count_tokens is not None:
                self.tokens[key] += count_tokens(result)
            return result

        return timed

    @contextmanager
    def timing(self) -> Iterator[None]:
        from veripo.recipes import stage_loop
        from veripo.rewards.profiles import ScoringProfile
        from veripo.rollout.hf_engine import HFRolloutEngine
        from veripo.verifier import run as verifier_run

        def generated(groups: Any) -> int:  # prompt once per question + every generated token
            return sum(g.prompt_tokens + sum(len(r.token_ids) for r in g.responses) for g in groups)

        patches = [(HFRolloutEngine, "generate", "rollout", generated), (ScoringProfile, "score_group", "score", None),
                   (stage_loop.StageLoop, "optimizer_step", "update", None),
                   (verifier_run, "_judge_in_batches", "judge", None)]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patches]
        for owner, name, part, count in patches:
            setattr(owner, name, self.wrap(part, getattr(owner, name), count))
        try:
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)


def overrides_for(work: Workload) -> list[str]:
    """The demo config at the workload's size, frames and pixels, the vision tower frozen, the GRPO phase's
    questions drawn ``rollout_batches`` times (one optimizer step each) and pairs for every question
    (``verifier.reference_chosen``: DPO has work on an untrained model)."""
    pixels = work.side * work.side
    data = "loop.0.data.0.synthetic"
    heldout = "eval.heldout.0.synthetic"
    return [
        f"model.build_tiny={work.size}", "model.freeze=[vision]",
        f"media.max_frames={work.frames}", f"media.min_frames={min(2, work.frames)}", f"media.max_pixels={pixels}",
        f"{data}.size={work.side}", f"{data}.frames=[{work.frames},{work.frames}]", f"{data}.n={work.questions}",
        f"{heldout}.size={work.side}", f"{heldout}.frames=[{work.frames},{work.frames}]",
        f"{heldout}.n={work.eval_items}",
        f"grpo.rollout_batch_size={work.questions}", f"grpo.max_steps={work.rollout_batches}",
        f"loop.0.grpo.max_steps={work.rollout_batches}",  # the demo's video GRPO stage sets its own
        f"grpo.global_batch_size={work.questions * 8}", "grpo.filter_equal_groups=false",
        f"rollout.max_new_tokens={work.new_tokens}", f"eval.max_new_tokens={work.new_tokens}",
        "verifier.reference_chosen=true", "dpo.epochs=1",
    ]


def has_budget_key() -> bool:
    from veripo.config.schema import GRPOConfig

    return BUDGET_KEY in {f.name for f in dataclasses.fields(GRPOConfig)}


def run_setting(label: str, cfg: Any, run: Any, policy: Any, start: dict, store: Any, encode: Any, questions: list,
                console: Any, first_index: int) -> dict[str, Any]:
    """One pass of eval -> GRPO -> eval -> verify -> DPO -> eval from ``start`` weights under ``cfg``."""
    from veripo.data.jsonl import read_jsonl
    from veripo.recipes.common import open_vision_cache
    from veripo.recipes.context import StageContext
    from veripo.recipes.dpo import pair_token_ids, read_pairs, run_dpo
    from veripo.recipes.evaluation import evaluate_stage
    from veripo.recipes.grpo import run_grpo
    from veripo.recipes.verify import run_verify

    policy.model.load_state_dict(start)
    cached = open_vision_cache(policy.model, cfg.model, run.root / f"vision-cache-{first_index}", False)
    stages = {s.kind: s for s in cfg.loop}
    times, evals = PhaseTimes(), []
    index = iter(range(first_index, first_index + 10))

    def context(kind: str, **inputs: Path) -> StageContext:
        i = next(index)
        return StageContext(cfg=cfg, stage=stages[kind], index=i, stage_dir=run.stage_dir(i, f"{kind}-{i}"),
                            policy=policy, samples=questions, encode=encode, console=console, inputs=inputs,
                            show_progress=False)

    def held_out(name: str) -> None:
        ctx = context("grpo")
        with times.phase(name):
            metrics = next(iter(evaluate_stage(ctx, store, ctx.stage_dir / "eval").values()))
        evals.append(metrics)
        rows = read_jsonl(next((ctx.stage_dir / "eval").glob("*/predictions.jsonl")))
        times.tokens[name] += sum(int(r.get("prompt_tokens", 0)) + int(r.get("response_tokens", 0)) for r in rows)

    with times.timing():
        held_out("eval before")
        with times.phase("GRPO"):
            grpo = run_grpo(context("grpo"))
        held_out("eval after GRPO")
        with times.phase("verify"):
            verified = run_verify(context("verify", rollouts=grpo.outputs["rollouts.jsonl"]))
        pairs = read_pairs(verified.outputs["pairs"])
        with times.phase("DPO"):
            dpo = run_dpo(context("dpo", pairs=verified.outputs["pairs"])) if pairs else None
        held_out("eval after DPO")
    rollouts = read_jsonl(grpo.outputs["rollouts.jsonl"])
    G = cfg.rollout.num_generations
    times.tokens["GRPO/update"] = sum(r["response_tokens"] + r["prompt_tokens"] / G for r in rollouts)
    prompts = {p.sample_id: encode(store_sample(questions, p.sample_id))["input_ids"].shape[1] for p in pairs}
    times.tokens["DPO/update"] = sum(prompts.values()) + sum(
        len(c) + len(r) for c, r in (pair_token_ids(policy.tokenizer, p) for p in pairs))
    cache_rows = [r for path in run.root.glob("stages/*/metrics.jsonl") for r in read_jsonl(path)
                  if "vision_cache_hits" in r]
    return {"label": label, "note": cached, "times": times, "evals": evals, "pairs": len(pairs),
            "grpo_steps": grpo.steps, "dpo_steps": dpo.steps if dpo else 0, "rollouts": len(rollouts),
            "cache_hits": sum(r["vision_cache_hits"] for r in cache_rows) if cache_rows else None}


def store_sample(questions: list, sample_id: str) -> Any:
    return next(q for q in questions if q.id == sample_id)


def rate(tokens: float, seconds: float) -> str:
    return f"{tokens / seconds:,.0f}" if seconds > 0 and tokens else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="seconds: tiny model, 4 frames of 56 px, 2 questions")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"also run with grpo.{BUDGET_KEY}=N (skipped where the config has no such key)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="run folder parent (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the numbers here too")
    args = parser.parse_args(argv)
    work = TINY if args.tiny else FULL

    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from rich.console import Console

    from veripo.config import RunConfig, load
    from veripo.models import build_tiny, load_policy
    from veripo.models.adapters import freeze_parts
    from veripo.recipes.run_dir import RunDir
    from veripo.recipes.sources import SampleStore

    transformers.logging.set_verbosity_error()
    console = Console(stderr=True, quiet=True)
    base = overrides_for(work)
    settings = {"cache off": ["model.vision_cache=false"], "cache on": ["model.vision_cache=true"]}
    if args.budget is not None:
        if has_budget_key():
            settings["cache on + token budget"] = ["model.vision_cache=true", f"grpo.{BUDGET_KEY}={args.budget}"]
        else:
            print(f"token budget: skipped, this config has no grpo.{BUDGET_KEY} (issue 27 part 2 not merged here)")
    configs = {label: load(RunConfig, DEMO_CONFIG, [*base, *extra]) for label, extra in settings.items()}
    cfg = configs["cache off"]
    run = RunDir.create(args.work or tempfile.mkdtemp(prefix="bench-loop-"), "loop")
    build_tiny(run.root / "base-model", size=work.size, seed=cfg.seed)
    policy = load_policy(run.root / "base-model")
    freeze_parts(policy.model, cfg.model.freeze)
    store = SampleStore(cfg, run, console)
    for source in (*cfg.loop[0].data, *cfg.eval.heldout):
        store.generate(source)
    questions = store.load_all(cfg.loop[0].data)
    # not timed: every prompt decoded and patchified once (the encoder memoises them, so every setting reads
    # the same tensors)
    encode = store.encoder(policy)
    prompts = [encode(s) for s in (*questions, *store.load_all(cfg.eval.heldout))]
    grid = prompts[0]["video_grid_thw"][0].tolist()
    start = copy.deepcopy(policy.model.state_dict())
    # not timed either: the whole loop once on one question with 2-token responses, so that lazy imports and
    # first calls (reward parsers, optimizer, checkpoint writer) are not charged to the first setting
    warm = load(RunConfig, DEMO_CONFIG, [*base, "model.vision_cache=false", "grpo.rollout_batch_size=1",
                                         "grpo.max_steps=1", "loop.0.grpo.max_steps=1", "grpo.global_batch_size=8",
                                         "rollout.max_new_tokens=2", "eval.max_new_tokens=2"])
    run_setting("warm-up", warm, run, policy, start, store, encode, questions[:1], console, 90)
    results = [run_setting(label, configs[label], run, policy, start, store, encode, questions, console, 10 * k)
               for k, label in enumerate(settings)]

    print(f"{work.questions} video questions x {work.rollout_batches} rollout batches, G={cfg.rollout.num_generations}, "
          f"max {work.new_tokens} new tokens, {work.size} model, {work.frames} frames of {work.side} px (video grid "
          f"t,h,w = {grid}), vision tower frozen, {args.threads} torch thread(s); {work.eval_items} held-out items\n")
    phases = ["eval before", "GRPO", "GRPO/rollout", "GRPO/score", "GRPO/update", "eval after GRPO", "verify",
              "verify/judge", "DPO", "DPO/update", "eval after DPO"]
    token_key = {"GRPO/rollout": "GRPO/rollout", "GRPO/update": "GRPO/update", "DPO": "DPO/update",
                 "DPO/update": "DPO/update", "eval before": "eval before", "eval after GRPO": "eval after GRPO",
                 "eval after DPO": "eval after DPO"}
    # CPU seconds (time.process_time) are the robust figure on a shared machine; wall seconds beside them
    header = " | ".join(f"{r['label']}: CPU s | wall s | tokens per CPU s" for r in results)
    print(f"| phase | {header} | " + " | ".join(f"cache off / {r['label']} (CPU)" for r in results[1:]) + " |")
    print("|---" * (1 + 3 * len(results) + len(results) - 1) + "|")
    for phase in phases:
        cells = []
        for r in results:
            t = r["times"]
            cells.append(f"{t.cpu[phase]:.2f} | {t.wall[phase]:.2f} | {rate(t.tokens[token_key.get(phase, '')], t.cpu[phase])}")
        base_cpu = results[0]["times"].cpu[phase]
        ratios = [f"{base_cpu / r['times'].cpu[phase]:.2f}x" if r["times"].cpu[phase] > 0 else "-"
                  for r in results[1:]]
        print(f"| {phase} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print()
    summary = []
    for r in results:
        t, (e0, e1, e2) = r["times"], r["evals"]
        grpo_s, veripo_s = t.cpu["GRPO"], t.cpu["verify"] + t.cpu["DPO"]

        def drop(before: dict, after: dict, seconds: float) -> str:
            a, b = before.get("inconsistency_rate"), after.get("inconsistency_rate")
            return "n/a (nothing judged)" if a is None or b is None else f"{(a - b) / seconds:+.4f}/s ({a:.3f} -> {b:.3f})"

        print(f"{r['label']}: verify+DPO {veripo_s:.2f} CPU s = {veripo_s / grpo_s:.2f}x the GRPO phase's {grpo_s:.2f} CPU s "
              f"({r['pairs']} pairs, {r['dpo_steps']} DPO steps; {r['rollouts']} rollouts, {r['grpo_steps']} GRPO "
              f"steps); inconsistency removed per CPU second: GRPO {drop(e0, e1, grpo_s)}, verify+DPO "
              f"{drop(e1, e2, veripo_s)}; accuracy {e0.get('accuracy')} -> {e1.get('accuracy')} -> "
              f"{e2.get('accuracy')}; visual cache hits {r['cache_hits']}")
        summary.append({"label": r["label"], "wall_s": dict(t.wall), "cpu_s": dict(t.cpu), "tokens": dict(t.tokens),
                        "evals": r["evals"], "pairs": r["pairs"], "grpo_steps": r["grpo_steps"],
                        "dpo_steps": r["dpo_steps"], "cache_hits": r["cache_hits"]})
    off, on = results[0]["times"], results[1]["times"]
    print(f"\nvisual feature cache, video GRPO phase with a frozen tower: {off.cpu['GRPO'] / on.cpu['GRPO']:.2f}x "
          f"(CPU), {off.wall['GRPO'] / on.wall['GRPO']:.2f}x (wall); whole loop "
          f"{sum(off.cpu[p] for p in TOP) / sum(on.cpu[p] for p in TOP):.2f}x (CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({"workload": dataclasses.asdict(work), "grid_thw": grid,
                                               "settings": summary}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
