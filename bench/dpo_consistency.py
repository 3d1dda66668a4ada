"""Does a DPO stage lower the thinking/answer inconsistency rate? Fresh rollouts of the same questions,
before and after, judged by the same judge.

For every DPO stage of a finished run: take the questions of the verify stage that fed it, load the policy
before the DPO stage (the newest checkpoint of the training stage before it) and after it, sample G fresh
rollouts per question from each with the same seeds, and judge them with the run's judge. Prints the
inconsistency rate (judged rollouts) and accuracy before and after.

    .venv/bin/python bench/dpo_consistency.py runs/demo-YYYYmmdd-HHMMSS [--judge rule] [--samples-per-question 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def newest_checkpoint(stage_dir: Path) -> Path:
    pointer = json.loads((stage_dir / "latest.json").read_text())["checkpoint"]
    return stage_dir / "checkpoints" / pointer


def measure(run_dir: Path, judge_name: str, g: int, seed: int) -> list[dict]:
    from rich.console import Console

    from veripo.config import RunConfig, load
    from veripo.data.jsonl import read_jsonl
    from veripo.models import load_policy
    from veripo.recipes.common import derive_seed
    from veripo.recipes.run_dir import RunDir
    from veripo.recipes.sources import SampleStore
    from veripo.rewards import parse_completion
    from veripo.rewards.profiles import build_profile
    from veripo.rollout import HFRolloutEngine, SamplingParams
    from veripo.verifier.judges import JudgeItem, make_judge

    cfg = load(RunConfig, run_dir / "config.yaml")
    state = json.loads((run_dir / "state.json").read_text())
    stages = {e["index"]: e for e in state["completed"]}
    store = SampleStore(cfg, RunDir(run_dir), Console(stderr=True))
    for source in (*cfg.data, *(d for s in (*cfg.stages, *cfg.loop) for d in s.data)):
        store.load(source)
    samples = {s.id: s for s in store.all_samples()}
    profile = build_profile(cfg.rewards.profile)
    results = []
    for index in sorted(stages):
        entry = stages[index]
        if entry["kind"] != "dpo" or entry.get("steps", 0) == 0:
            continue
        verify = max((e for e in stages.values() if e["kind"] == "verify" and e["index"] < index), key=lambda e: e["index"])
        before = max((e for e in stages.values() if e["kind"] in ("sft", "grpo", "dpo") and e["index"] < index
                      and e.get("steps", 0) > 0), key=lambda e: e["index"])
        verify_dir = next((run_dir / "stages").glob(f"{verify['index']:02d}-*"))
        question_ids = sorted({v["sample_id"] for v in read_jsonl(verify_dir / "verdicts.jsonl")})
        questions = [samples[q] for q in question_ids if q in samples]
        row = {"dpo_stage": entry["name"], "questions": len(questions)}
        for label, stage_index in (("before", before["index"]), ("after", index)):
            stage_dir = next((run_dir / "stages").glob(f"{stage_index:02d}-*"))
            policy = load_policy(newest_checkpoint(stage_dir))
            encode = store.encoder(policy)
            engine = HFRolloutEngine(policy.model, policy.tokenizer)
            params = SamplingParams(num_generations=g, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens)
            items, accuracy = [], []
            for sample in questions:
                (out,) = engine.generate([encode(sample)], params, seeds=[derive_seed(seed, "dpo-consistency", sample.id)])
                for r in out.responses:
                    parsed = parse_completion(r.text)
                    items.append(JudgeItem(sample, parsed.thinking, parsed.answer))
                    accuracy.append(profile.score(r.text, sample)["accuracy"])
            labels = [x.label for x in make_judge(cfg.verifier, judge_name).judge(items)]
            judged = labels.count("consistent") + labels.count("inconsistent")
            row[label] = {"inconsistency_rate": labels.count("inconsistent") / judged if judged else None,
                          "judged": judged, "rollouts": len(labels), "accuracy": sum(accuracy) / max(1, len(accuracy))}
        results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--judge", default="rule")
    parser.add_argument("--samples-per-question", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    from veripo.cli.train import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    print(f"{'DPO stage':<24} {'questions':>9}  {'inconsistency before -> after':>30}  {'accuracy before -> after':>26}")
    for row in measure(args.run_dir, args.judge, args.samples_per_question, args.seed):
        b, a = row["before"], row["after"]
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"{row['dpo_stage']:<24} {row['questions']:>9}  "
              f"{fmt(b['inconsistency_rate']):>13} -> {fmt(a['inconsistency_rate']):<8} ({b['judged']}/{a['judged']} judged)"
              f"  {fmt(b['accuracy']):>10} -> {fmt(a['accuracy'])}")


if __name__ == "__main__":
    main()
