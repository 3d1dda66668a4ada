"""The judge prompt: the shipped template, a user's replacement, and bad templates failing before judging."""

from __future__ import annotations

import pytest

from veripo.config import VerifierConfig
from veripo.data.records import Sample
from veripo.verifier.judges import (
    DEFAULT_PROMPT,
    JudgeItem,
    load_template,
    make_judge,
    render_prompt,
)

MC = Sample(id="q", problem="Which way did the ball move?", problem_type="multiple choice", answer="B",
            options=["A. up", "B. left"])


def test_shipped_template_renders_every_field_and_untrusted_braces_stay_text():
    template = load_template(DEFAULT_PROMPT)
    item = JudgeItem(MC, "The {answer} is {0} {thinking.__class__}. So B.", "B")
    prompt = render_prompt(template, item)
    assert "Which way did the ball move?" in prompt and "A. up\nB. left" in prompt
    assert "The {answer} is {0} {thinking.__class__}. So B." in prompt  # values are never formatted again
    assert prompt.rstrip().endswith("VERDICT: INCONSISTENT")
    long = render_prompt(template, JudgeItem(MC, "x" * 10_000 + " So the answer is B.", "B"), max_chars=100)
    assert "So the answer is B." in long and "x" * 101 not in long  # the end of a long chain is kept


@pytest.mark.parametrize(("text", "message"), [
    ("Thinking: {thinking}", "expected {thinking} and {answer}"),
    ('Reply as JSON {"verdict": ...}\n{thinking}\n{answer}', "write literal braces as {{ and }}"),
    ("{thinking} {answer} {0}", "unknown: ['0']"),
    ("{thinking} {answer} {answer.__class__}", "unknown"),
    ("{thinking} {answer} }", "Single '}'"),
])
def test_bad_templates_fail_before_any_judging(tmp_path, text, message):
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match="prompt_template") as error:
        make_judge(VerifierConfig(prompt_template=str(path)))
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_template_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no_such.txt"):
        make_judge(VerifierConfig(prompt_template=str(tmp_path / "no_such.txt")))


def test_replacement_template_with_doubled_braces(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text('Answer as {{"verdict": ...}}.\n{thinking}\n=> {answer}\n')
    template = load_template(path)
    assert render_prompt(template, JudgeItem(MC, "So B.", "B")) == 'Answer as {"verdict": ...}.\nSo B.\n=> B\n'
