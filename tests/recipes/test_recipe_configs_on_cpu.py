"""Every config in configs/recipes/ runs a short tiny-model run (its own stages and algorithm keys, sizes cut
down), and ``veripo demo --recipe dapo`` runs the loop with DAPO sampling and shows the resample counts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.config import RunConfig, load
from veripo.data.jsonl import read_jsonl
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow
RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs" / "recipes").glob("*.yaml"))
SHORT = ["rollout.num_generations=4", "rollout.max_new_tokens=40", "grpo.rollout_batch_size=2",
         "grpo.global_batch_size=8", "grpo.max_steps=1", "sft.max_steps=2", "dpo.epochs=1",
         "eval.max_new_tokens=8", "eval.batch_size=4"]


def shortened(cfg: RunConfig, out: Path, model_dir: Path) -> RunConfig:
    """The recipe with a few questions per source and the session's tiny model (built once)."""
    def few(sources, n):
        return tuple(dataclasses.replace(d, synthetic={**d.synthetic, "n": n}) for d in sources)

    stages = tuple(dataclasses.replace(s, data=few(s.data, 4)) for s in cfg.stages)
    loop = tuple(dataclasses.replace(s, data=few(s.data, 4)) for s in cfg.loop)
    return dataclasses.replace(
        cfg, output_dir=str(out), data=few(cfg.data, 6), stages=stages, loop=loop,
        model=dataclasses.replace(cfg.model, path=str(model_dir), build_tiny=None),
        eval=dataclasses.replace(cfg.eval, heldout=few(cfg.eval.heldout, 4)))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_on_the_tiny_model(path, tmp_path, tiny_model_dir):
    cfg = shortened(load(RunConfig, path, SHORT), tmp_path, tiny_model_dir)
    root = run(cfg, show_progress=False).root
    summary = json.loads((root / "summary.json").read_text())
    expected = [s.name for s in cfg.stages] + [s.name for s in cfg.loop] * cfg.iterations
    assert [s["name"].rsplit("-it", 1)[0] for s in summary["stages"]] == expected  # loop stages: -it1, ...
    for stage in summary["stages"]:
        if stage["kind"] == "grpo":
            folder = root / "stages" / f"{stage['index']:02d}-{stage['name']}"
            rollouts = read_jsonl(folder / "rollouts.jsonl")
            assert rollouts and stage["questions_drawn"] >= 2
            named = stage["name"].rsplit("-it", 1)[0]
            grpo = cfg.section_for(next(s for s in (*cfg.stages, *cfg.loop) if s.name == named), "grpo")
            if grpo.temporal:  # Video-R1: the video questions' groups carry the temporal term
                assert all("temporal" in r["rewards"] for r in rollouts)
            if grpo.overlong_buffer:
                assert all("overlong" in r["rewards"] for r in rollouts)
            if cfg.rewards.length.bonus:
                assert all("length_bonus" in r["rewards"] for r in rollouts)


def test_demo_recipe_dapo_shows_the_resample_counts(tmp_path, tiny_model_dir):
    from veripo.cli.main import app

    overrides = [*SHORT, f"output_dir={tmp_path}", f"model.path={tiny_model_dir}", "model.build_tiny=null",
                 "data.0.synthetic.n=6", "stages.1.data.0.synthetic.n=6", "eval.heldout.0.synthetic.n=4"]
    result = CliRunner().invoke(app, ["demo", "--recipe", "dapo", *overrides])
    assert result.exit_code == 0, result.output
    root = next(tmp_path.iterdir())
    grpo = next(s for s in json.loads((root / "summary.json").read_text())["stages"] if s["kind"] == "grpo")
    assert grpo["questions_resampled"] > 0 and grpo["resample_rounds"] > 0  # an untrained model's groups are equal
    assert "resampled" in result.output and f"{grpo['questions_resampled']}/{grpo['resample_rounds']}" in result.output
    report = (root / "report" / "index.html").read_text()
    assert "Dynamic sampling (DAPO)" in report and "resampled questions" in report


def test_demo_refuses_an_unknown_recipe():
    from veripo.cli.main import app

    result = CliRunner().invoke(app, ["demo", "--recipe", "dapoo"])
    assert result.exit_code == 2 and "dapo" in result.output
