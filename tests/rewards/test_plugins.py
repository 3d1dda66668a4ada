"""A user's own reward function or judge class named by import path in the config: loaded at the start of a run,
registered like the built-in ones (GRPO's scoring, scoring workers, the verifier), and a clear error when it
does not import or has the wrong signature."""

from __future__ import annotations

import dataclasses
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veripo.config import ConfigError, RunConfig, VerifierConfig, load
from veripo.data.records import Rollout, Sample
from veripo.rewards import score_batch
from veripo.rewards.profiles import build_profile, profile_for
from veripo.rewards.registry import REWARDS, get_reward
from veripo.verifier.judges import JUDGES, JudgeItem, make_judge
from veripo.verifier.run import verify_rollouts

MC = Sample(id="q", problem="Which?", problem_type="multiple choice", answer="B", options=["A. x", "B. y"])

REWARDS_PY = '''
def exclaims(completion, sample):
    """0.25 per exclamation mark, at most 1."""
    return min(1.0, 0.25 * completion.count("!"))

def one_argument(completion):
    return 0.0

NOT_A_FUNCTION = 3
'''

JUDGES_PY = '''
from collections import Counter
from veripo.verifier.judges import JudgeResult

class ShoutJudge:
    """Inconsistent when the answer is shouted (upper case and '!')."""
    name = "shout"

    def __init__(self, cfg, template):
        self.stats = Counter()

    def judge(self, items):
        out = []
        for item in items:
            label = "inconsistent" if (item.answer or "").endswith("!") else "consistent"
            self.stats[label] += 1
            out.append(JudgeResult(label))
        return out

class NoJudgeMethod:
    def __init__(self, cfg, template):
        pass

def takes_nothing():
    return None
'''


@pytest.fixture
def package(tmp_path, monkeypatch) -> str:
    """A fresh importable package ``pkg_<id>`` with ``rewards.py`` and ``judges.py``; what it registers is
    removed afterwards (the registry's own tests check every registered reward)."""
    name = f"pkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "rewards.py").write_text(textwrap.dedent(REWARDS_PY))
    (root / "judges.py").write_text(textwrap.dedent(JUDGES_PY))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # for spawned scoring workers
    yield name
    for registry in (REWARDS, JUDGES):
        for key in [k for k in registry if k.startswith(name)]:
            registry.pop(key)


def test_a_reward_by_import_path_scores_like_a_registered_one(package):
    path = f"{package}.rewards:exclaims"
    profile = build_profile("veripo", (path,), {path: 2.0})
    scores = profile.score("<think>y!!</think><answer>B</answer>", MC)
    assert scores[path] == 0.5 and scores["total"] == pytest.approx(1.0 + 0.5 + 2.0 * 0.5)
    assert get_reward(path) is REWARDS[path]  # registered like the built-in ones


def test_scoring_workers_load_the_reward_by_its_path(package):
    path = f"{package}.rewards:exclaims"
    profile = profile_for(RunConfig().rewards.__class__(extra=(path,)))
    batch = score_batch(["!!", "nothing"], [MC, MC], profile, workers=1, timeout_s=60)
    assert [s[path] for s in batch] == [0.5, 0.0] and not batch.failures


@pytest.mark.parametrize(("attribute", "message"), [
    ("nowhere:exclaims", "cannot import module 'nowhere'"),
    ("{pkg}.rewards:missing", "has no attribute 'missing'"),
    ("{pkg}.rewards:one_argument", "expected it to be callable as (completion, sample)"),
    ("{pkg}.rewards:NOT_A_FUNCTION", "is a int, not a function"),
    ("{pkg}.rewards:", "expected an import path"),
])
def test_a_bad_reward_path_fails_at_the_start_of_the_run_naming_the_key(package, tmp_path, attribute, message):
    from veripo.recipes.veripo import run

    path = attribute.format(pkg=package)
    cfg = load(RunConfig, None, [f"output_dir={tmp_path / 'runs'}", f"rewards.extra=['{path}']"])
    with pytest.raises(ConfigError) as e:
        run(cfg, show_progress=False)
    assert "'rewards.extra[0]'" in str(e.value) and message in str(e.value), str(e.value)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_the_cli_reports_a_bad_path_with_exit_code_2(package, tmp_path):
    from veripo.cli.main import app

    result = CliRunner().invoke(app, ["run", f"output_dir={tmp_path}", f"rewards.extra=['{package}.rewards:nope']"])
    assert result.exit_code == 2, result.output
    assert "rewards.extra[0]" in result.output and "Traceback" not in result.output


def _rollout(i: int, text: str) -> Rollout:
    return Rollout(id=f"q/g/0/{i}", sample_id="q", group_index=i, text=text, stage="g", step=0, thinking_tokens=3)


def test_a_judge_by_import_path_judges_in_the_verifier(package, tmp_path):
    cfg = VerifierConfig(judge=f"{package}.judges:ShoutJudge", fallback_to_rule=False)
    judge = make_judge(cfg)
    items = [JudgeItem(MC, "it is y", "B"), JudgeItem(MC, "it is y", "B!")]
    assert [r.label for r in judge.judge(items)] == ["consistent", "inconsistent"]
    rollouts = [_rollout(0, "<think>it is y</think><answer>B</answer>"),
                _rollout(1, "<think>it is y</think><answer>B!</answer>")]
    summary = verify_rollouts(rollouts, {"q": MC}, cfg, tmp_path / "out")
    assert summary.judge == "shout" and dict(summary.consistency) == {"consistent": 1, "inconsistent": 1}


@pytest.mark.parametrize(("attribute", "message"), [
    ("{pkg}.judges:takes_nothing", "expected it to be callable as (cfg, template)"),
    ("{pkg}.judges:Missing", "has no attribute 'Missing'"),
])
def test_a_bad_judge_path_fails_at_the_start_of_the_run(package, tmp_path, attribute, message):
    from veripo.recipes.veripo import run

    cfg = load(RunConfig, None, [f"output_dir={tmp_path}", f"verifier.judge={attribute.format(pkg=package)}"])
    with pytest.raises(ConfigError) as e:
        run(cfg, show_progress=False)
    assert "'verifier.judge'" in str(e.value) and message in str(e.value), str(e.value)


def test_a_judge_without_a_judge_method_is_refused_when_made(package):
    with pytest.raises(ValueError, match="without a judge\\(items\\) method"):
        make_judge(VerifierConfig(judge=f"{package}.judges:NoJudgeMethod"))


def test_a_judge_name_is_a_built_in_one_or_an_import_path():
    with pytest.raises(ConfigError, match="'verifier.judge'.*import path"):
        load(RunConfig, None, ["verifier.judge=gpt"])
    with pytest.raises(ConfigError, match="'eval.judge'"):
        load(RunConfig, None, ["eval.judge=gpt"])
    assert dataclasses.replace(VerifierConfig(), judge="a.b:C").judge == "a.b:C"


def test_the_stage_override_of_a_judge_is_checked_with_its_path(package, tmp_path: Path):
    from veripo.recipes.veripo import run

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\nstages:\n"
                      f"  - {{name: v, kind: verify, verifier: {{judge: '{package}.judges:Missing'}}}}\n")
    with pytest.raises(ConfigError, match=r"'stages\[0\]\.verifier\.judge'"):
        run(load(RunConfig, config), show_progress=False)
