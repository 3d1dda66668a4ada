"""The rule judge: the conclusion a chain settles on near its end against the final answer."""

from __future__ import annotations

import pytest
from answers import a_different_answer

from veripo.data.records import Sample
from veripo.verifier.judges import JudgeItem, RuleJudge, parse_verdict

MC = Sample(id="mc", problem="Where did the square move?", problem_type="multiple choice", answer="B",
            options=["A. up", "B. moved left", "C. moved right", "D. down"])
NUM = Sample(id="n", problem="How many circles?", problem_type="numerical", answer="3")
NESTED = Sample(id="nest", problem="Where did it go?", problem_type="multiple choice", answer="B",
                options=["A. left", "B. moved left", "C. right"])
FREE = Sample(id="f", problem="What is the man doing?", problem_type="free-form", answer="sitting")

CASES = [
    (MC, "The square starts in the middle. So the answer is B.", "B", "consistent"),
    (MC, "The square starts in the middle. So the answer is B.", "C", "inconsistent"),
    (MC, "Frame 1 shows it centred, frame 4 at the edge. The square moved left.", "B", "consistent"),
    (MC, "Frame 1 shows it centred, frame 4 at the edge. The square moved left.", "C. moved right", "inconsistent"),
    (MC, "At first I think it is A. Wait, let me re-check. Therefore the answer is option D.", "D", "consistent"),
    (MC, "I cannot tell from these frames.", "A", "unknown"),
    (MC, "Left is option B, so the answer is A.", "A", "consistent"),  # the last cue concludes
    (MC, "Left is option B, so the answer is A.", "B", "inconsistent"),
    (NUM, "I count one, two, three circles. Therefore 3.", "3", "consistent"),
    (NUM, "I count one, two, three circles. Therefore 3.", "4", "inconsistent"),
    (NUM, "Two plus three gives 5. So the total is 5.0", "5", "consistent"),
    (NUM, "There are some circles.", "3", "unknown"),
    (NUM, "So the answer is 3.", None, "unknown"),
    (NUM, None, "3", "unknown"),
    (NESTED, "In the last frame the square moved left.", "B", "consistent"),  # not also "A. left"
    (NESTED, "In the last frame the square moved left.", "A", "inconsistent"),
    (FREE, "He stays on the bench. So the man is sitting.", "sitting", "consistent"),
    (FREE, "He stays on the bench. So the man is sitting.", "He is running", "inconsistent"),  # the paper's case
    (FREE, "He stays on the bench. So the man is sitting down.", "the man is standing", "unknown"),  # rule can't tell
    (FREE, "He stays on the bench the whole time.", "sitting", "unknown"),
]


@pytest.mark.parametrize(("sample", "thinking", "answer", "label"), CASES)
def test_rule_judge_labels(sample, thinking, answer, label):
    judge = RuleJudge()
    [result] = judge.judge([JudgeItem(sample, thinking, answer)])
    assert result.label == label, result.raw
    assert judge.stats[label] == 1


def test_rule_judge_is_batched_and_deterministic():
    items = [JudgeItem(s, t, a) for s, t, a, _ in CASES]
    first = [r.label for r in RuleJudge().judge(items)]
    assert first == [r.label for r in RuleJudge().judge(items)] == [c[3] for c in CASES]


@pytest.mark.parametrize(("reply", "label"), [
    ("VERDICT: CONSISTENT", "consistent"),
    ("The answer follows.\nVERDICT: INCONSISTENT\n\n", "inconsistent"),
    ("  VERDICT:   CONSISTENT  ", "consistent"),
    ("VERDICT: CONSISTENT\nbut maybe not", None),  # the verdict must be the last line
    ("verdict: consistent", None),  # strict: upper case as the prompt asks
    ("VERDICT: MAYBE", None),
    ("CONSISTENT", None),
    ("", None),
    ("\x17!\ufffd\ufffd", None),
])
def test_strict_verdict_parser(reply, label):
    assert parse_verdict(reply) == label


def synthetic_samples() -> list[Sample]:
    """Every synthetic task kind (video, image, text tasks of every problem type), a few seeds each."""
    from veripo.data.synthetic import TASKS, Canvas, generate_task

    samples = []
    for kind, names in TASKS.items():
        for i in range(3 * len(names)):  # each task name three times (names cycle with the index)
            task = generate_task(7, i, kind, canvas=Canvas(size=112), frames=(4, 8), difficulties=(1, 2, 3))
            samples.append(Sample(id=f"{kind}/{i}", problem=task.problem, problem_type=task.problem_type,
                                  answer=task.answer, options=task.options, reasoning=task.reasoning))
    return samples


def test_synthetic_reference_chains_are_consistent_with_their_gold_answer():
    samples = synthetic_samples()
    assert {s.problem_type for s in samples} >= {"multiple choice", "numerical", "regression", "OCR", "free-form",
                                                  "math"}
    judge = RuleJudge()
    gold = judge.judge([JudgeItem(s, s.reasoning, s.answer) for s in samples])
    assert [r.label for r in gold] == ["consistent"] * len(samples), [
        (s.id, r.raw) for s, r in zip(samples, gold) if r.label != "consistent"]
    other = judge.judge([JudgeItem(s, s.reasoning, a_different_answer(s)) for s in samples])
    assert [r.label for r in other] == ["inconsistent"] * len(samples), [
        (s.id, r.raw) for s, r in zip(samples, other) if r.label != "inconsistent"]
