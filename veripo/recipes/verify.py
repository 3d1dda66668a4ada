"""Verify stage: the Rollout-Aware Verifier over the rollouts of the last GRPO stage -> pairs for DPO."""

from __future__ import annotations

from veripo.data.loaders import DataError
from veripo.recipes.common import Stopwatch
from veripo.recipes.context import StageContext, StageResult
from veripo.recipes.run_dir import read_json
from veripo.rewards.profiles import profile_for
from veripo.verifier.run import load_rollouts, verify_rollouts


def run_verify(ctx: StageContext) -> StageResult:
    rollouts_path = ctx.inputs.get("rollouts")
    if rollouts_path is None or not rollouts_path.exists():
        raise FileNotFoundError(f"stage '{ctx.stage.name}': no rollouts to verify (a verify stage follows a grpo stage)")
    outputs = {"pairs": ctx.stage_dir / "pairs.jsonl", "verdicts": ctx.stage_dir / "verdicts.jsonl"}
    done = read_json(ctx.stage_dir / "verify_summary.json")
    if done is not None and outputs["pairs"].exists():  # finished before a kill: do not judge twice
        return StageResult(outputs=outputs, numbers=_numbers(done, done.get("wall_time_s", 0.0)))
    clock = Stopwatch()
    if not ctx.dist.is_main:
        return StageResult(outputs=outputs)
    rollouts = load_rollouts(rollouts_path)
    samples = {s.id: s for s in ctx.samples}
    unknown = [r for r in rollouts if r.sample_id not in samples]
    if unknown:  # a run knows every question it sampled: verifying without them would silently build no pairs
        raise DataError(f"stage '{ctx.stage.name}': {len(unknown)} of {len(rollouts)} rollouts in {rollouts_path} "
                           f"refer to questions this run has not loaded (first: sample_id {unknown[0].sample_id!r})")
    # the rewards GRPO scored with (format gate, correct threshold): both judge a response the same way
    summary = verify_rollouts(rollouts, samples, ctx.section("verifier"), ctx.stage_dir,
                              profile=profile_for(ctx.cfg.rewards))
    data = summary.to_dict()
    ctx.log(f"{data['rollouts']} rollouts: failed {data['failed']}; pairs {data['pairs']}; "
            f"inconsistency rate {data['inconsistency_rate']}")
    return StageResult(outputs=outputs, numbers=_numbers(data, clock.elapsed()))


def _numbers(data: dict, wall: float) -> dict:
    return {"pairs": data["pairs"], "inconsistency_rate": data["inconsistency_rate"], "failed": data["failed"],
            "wall_time_s": wall}
