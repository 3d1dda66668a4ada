"""Real benchmark question files score 1.0 with their own gold answers written the way the prompt asks,
and 0 with a wrong option (or a wrong number)."""

from __future__ import annotations

from pathlib import Path

import pytest

from veripo.data.loaders import load_samples
from veripo.data.records import Sample
from veripo.rewards import get_profile
from veripo.rewards.parsing import option_letters

VIDEOR1 = "{}"  # Video-R1's prompt: the bare letter or number in <answer></answer>
VERIPO = " ${}$ "  # VerIPO's prompt: <answer> $X$ </answer>
# (file, answer written as the prompt asks, profiles that must score it). VerIPO's scorer reads numbers only
# in LaTeX ($12.97$), so it is checked with VerIPO's answer format on the Video-R1 files too.
CASES = [
    ("eval_mmvu.json", VIDEOR1, ("videor1-train", "videor1-eval", "veripo")),
    ("eval_videommmu.json", VIDEOR1, ("videor1-train", "videor1-eval", "veripo")),
    ("eval_videommmu.json", VERIPO, ("veripo-eval", "veripo")),
    ("veripo_tomato.json", VERIPO, ("veripo-eval", "veripo")),
    ("veripo_mmvu.json", VERIPO, ("veripo-eval", "veripo")),
]


def _wrong(sample: Sample) -> str:
    if sample.problem_type == "multiple choice":
        return next(letter for letter in option_letters(sample.options) if letter != sample.answer)
    return str(float(sample.answer) * 2 + 1)


@pytest.mark.parametrize("file_name, answer_format, profiles", CASES)
def test_gold_scores_one_and_wrong_option_zero(
    shared_data: Path, file_name: str, answer_format: str, profiles: tuple[str, ...]
) -> None:
    result = load_samples(shared_data / "real" / "eval_questions" / file_name, require_media=False, on_error="fail")
    samples = result.samples
    assert len(samples) > 600
    for name in profiles:
        profile = get_profile(name)
        for sample in samples:
            gold = f"<think>Let me look at the video.</think><answer>{answer_format.format(sample.answer)}</answer>"
            wrong = f"<think>Let me look at the video.</think><answer>{answer_format.format(_wrong(sample))}</answer>"
            assert profile.score(gold, sample)["accuracy"] == 1.0, (name, sample.id, sample.answer)
            assert profile.score(wrong, sample)["accuracy"] == 0.0, (name, sample.id, _wrong(sample))
