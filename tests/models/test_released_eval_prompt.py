"""VerIPO's released evaluation prompt on the authors' own question files: the user text equals what
``eval_model`` in github HITsz-TMG/VerIPO ``evaluation/evaluation_vllm.py`` builds (its two templates are
written out below by hand from that file, independently of veripo.models.prompts), and LVBench's options,
which its ``question`` field already lists, appear once."""

from __future__ import annotations

from pathlib import Path

import pytest

from veripo.data.loaders import load_samples
from veripo.data.records import Sample
from veripo.models.prompts import build_messages, veripo_prompt, videor1_prompt

# evaluation_vllm.py, OPTION_QUESTION_TEMPLATE and NUMBER_QUESTION_TEMPLATE (commit 75cb2f7), verbatim
AUTHORS_OPTION = ("You should first thinks about the reasoning process in the mind and then provides the user with "
                  "the answer. Your answer must be in latex format and wrapped in $...$.The reasoning process and "
                  "answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
                  "<think> Since ...., so the answer is B. </think><answer> $B$ </answer>, which means your output "
                  "should start with <think> and end with </answer>.\nQuestion:\n{Question}")
AUTHORS_NUMBER = ("You should first thinks about the reasoning process in the mind and then provides the user with "
                  "the answer. Your answer must be in latex format and wrapped in $...$.The reasoning process and "
                  "answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
                  "<think> Since ...., so the answer is $2$. </think><answer> $2$ </answer>, which means your "
                  "output should start with <think> and end with </answer>.\nQuestion:\n{Question}\nYou must "
                  "provide the answer in the <answer> </answer> tag, and the answer must be a number.")
REMOVED = "\nAnswer with the option's letter from the given choices directly."

# (file, kind of answer the three questions have)
FILES = [("veripo_tomato.json", "letter"), ("veripo_mmvu.json", "letter"), ("veripo_lvbench.json", "letter"),
         ("veripo_vsi_bench_sample.json", "number"), ("veripo_vsi_bench_sample.json", "letter")]


def _rows_and_samples(shared_data: Path, file_name: str) -> tuple[list[dict], list[Sample]]:
    import json

    path = shared_data / "real" / "eval_questions" / file_name
    rows = json.loads(path.read_text(encoding="utf-8"))
    samples = load_samples(path, require_media=False, on_error="fail").samples
    assert len(samples) == len(rows)
    return rows, samples


def _authors_prompt(row: dict) -> str:
    """eval_model's p_question for one item of the released JSON."""
    question = row["processed_question"].replace(REMOVED, "")
    return (AUTHORS_OPTION if row["answer"].isalpha() else AUTHORS_NUMBER).format(Question=question)


@pytest.mark.parametrize("file_name, answer_kind", FILES)
def test_prompt_equals_the_authors_for_three_questions(shared_data: Path, file_name: str, answer_kind: str) -> None:
    rows, samples = _rows_and_samples(shared_data, file_name)
    picked = [(r, s) for r, s in zip(rows, samples) if r["answer"].isalpha() == (answer_kind == "letter")][:3]
    assert len(picked) == 3
    for row, sample in picked:
        text = veripo_prompt(sample)
        assert text == _authors_prompt(row), sample.id
        assert text.endswith("must be a number.") == (answer_kind == "number")
        assert REMOVED not in text
        # the chat turn the model sees carries the same text after the video
        messages = build_messages(sample, n_images=0, has_video=True, style="veripo")
        assert messages[0]["content"] == [{"type": "video"}, {"type": "text", "text": text}]


def test_the_mmvu_instruction_line_is_removed_as_the_authors_do(shared_data: Path) -> None:
    rows, samples = _rows_and_samples(shared_data, "veripo_mmvu.json")
    assert REMOVED in rows[0]["processed_question"]
    assert veripo_prompt(samples[0]).endswith("\nE. 20.0")


@pytest.mark.parametrize("style", [veripo_prompt, videor1_prompt])
def test_lvbench_options_appear_once(shared_data: Path, style) -> None:
    rows, samples = _rows_and_samples(shared_data, "veripo_lvbench.json")
    for row, sample in list(zip(rows, samples))[:3]:
        assert len(sample.options) == 4
        assert "(A)" not in sample.problem and sample.problem == row["question"].split("\n(A)")[0]
        text = style(sample)
        for option in row["question"].split("\n")[1:]:  # "(A) ..." as published
            body = option[4:]
            assert text.count(body) == 1, (sample.id, body)


def test_training_questions_keep_the_training_prompt() -> None:
    # no processed_question: not from the authors' evaluation files, so not their template
    sample = Sample(id="t", problem="How many dots?", problem_type="numerical", answer="3")
    text = veripo_prompt(sample)
    assert not text.startswith("You should first thinks") and text.startswith("How many dots?\n")
