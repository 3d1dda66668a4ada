"""Prompt building: a :class:`~veripo.data.records.Sample` -> chat messages -> model inputs.

Two prompt styles, in a registry (``PROMPT_STYLES``):

- ``"videor1"``: Video-R1's training/eval prompt, verbatim from ``src/r1-v/src/open_r1/grpo.py``
  (``QUESTION_TEMPLATE`` + ``TYPE_TEMPLATE[problem_type]``; for multiple choice the question is
  ``problem + "Options:\\n" + one option per line``, exactly as ``make_conversation_image_and_video``).
- ``"veripo"``: for a question from the authors' VerIPO-format evaluation files (it carries
  ``processed_question``), the released evaluation prompt verbatim: ``OPTION_QUESTION_TEMPLATE`` when the
  gold answer is a letter, ``NUMBER_QUESTION_TEMPLATE`` otherwise, around ``processed_question`` with the
  "Answer with the option's letter ..." line removed, exactly as ``eval_model`` in
  ``evaluation/evaluation_vllm.py`` of github HITsz-TMG/VerIPO (commit 75cb2f7) builds it. Every other
  question (training data, Video-R1-format files) gets the training prompt, unchanged: reasoning in
  ``<think> </think>``, then ``<answer> $X$ </answer>`` with the answer in LaTeX dollars, and a
  must-be-a-number sentence for numeric problem types.

Media parts come first in the user turn (images, then the video), then the text, as Video-R1 does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from veripo.data.records import Sample

# --- Video-R1 (grpo.py), verbatim ------------------------------------------------------------------------
VIDEOR1_QUESTION_TEMPLATE = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)
VIDEOR1_TYPE_TEMPLATE: dict[str, str] = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                       "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
           "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}

# --- VerIPO's released evaluation prompt, verbatim ----------------------------------------------------------
# github HITsz-TMG/VerIPO, evaluation/evaluation_vllm.py (commit 75cb2f7b36dbd5d43fd1efc4e002e5bf32b700ec):
# OPTION_QUESTION_TEMPLATE, NUMBER_QUESTION_TEMPLATE and the instruction line eval_model() removes from
# processed_question before formatting (the authors' typo "thinks" and the missing space after "$...$." are theirs).
VERIPO_EVAL_PREAMBLE = (
    "You should first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "Your answer must be in latex format and wrapped in $...$.The reasoning process and answer are enclosed "
    "within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since ...., so the answer "
)
VERIPO_EVAL_OPTION_TEMPLATE = (
    VERIPO_EVAL_PREAMBLE + "is B. </think><answer> $B$ </answer>, which means your output should start with "
    "<think> and end with </answer>.\nQuestion:\n{Question}"
)
VERIPO_EVAL_NUMBER_TEMPLATE = (
    VERIPO_EVAL_PREAMBLE + "is $2$. </think><answer> $2$ </answer>, which means your output should start with "
    "<think> and end with </answer>.\nQuestion:\n{Question}\nYou must provide the answer in the <answer> "
    "</answer> tag, and the answer must be a number."
)
VERIPO_EVAL_REMOVED_LINE = "\nAnswer with the option's letter from the given choices directly."


def veripo_eval_prompt(processed_question: str, answer: str) -> str:
    """The user text VerIPO's ``eval_model`` builds for one question of its evaluation files: the option
    template when the gold answer is alphabetic (``answer.isalpha()``, as theirs), else the number template."""
    question = processed_question.replace(VERIPO_EVAL_REMOVED_LINE, "")
    template = VERIPO_EVAL_OPTION_TEMPLATE if answer.isalpha() else VERIPO_EVAL_NUMBER_TEMPLATE
    return template.format(Question=question)


# --- VerIPO-style training prompt (our own wording of the same answer format) -----------------------------
VERIPO_TEMPLATE = (
    "{Question}\n"
    "Answer the question by first thinking about the reasoning process and then giving the final answer. "
    "Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> $X$ </answer>, where X is the final answer "
    "in LaTeX format."
)
VERIPO_NUMERIC_SUFFIX = " The final answer X must be a number."
NUMERIC_PROBLEM_TYPES = ("numerical", "regression", "math")


def question_text(sample: Sample) -> str:
    """The problem with its options: Video-R1's ``problem + "Options:\\n" + "option\\n"...`` for multiple
    choice (no separator after the problem, as in its code), else the bare problem."""
    if sample.problem_type == "multiple choice" and sample.options:
        return sample.problem + "Options:\n" + "".join(option + "\n" for option in sample.options)
    return sample.problem


def videor1_prompt(sample: Sample) -> str:
    """Video-R1's user text for ``sample`` (``QUESTION_TEMPLATE.format(...) + TYPE_TEMPLATE[type]``)."""
    suffix = VIDEOR1_TYPE_TEMPLATE.get(sample.problem_type, VIDEOR1_TYPE_TEMPLATE["free-form"])
    return VIDEOR1_QUESTION_TEMPLATE.format(Question=question_text(sample)) + suffix


def veripo_prompt(sample: Sample) -> str:
    """VerIPO's user text for ``sample``: the released evaluation prompt for a question of the authors'
    evaluation files (``processed_question``), else the training prompt, whose numeric problem types get the
    must-be-a-number sentence."""
    processed = sample.extra.get("processed_question")
    if isinstance(processed, str):
        return veripo_eval_prompt(processed, sample.answer)
    question = sample.problem
    if sample.problem_type == "multiple choice" and sample.options:
        question = sample.problem + "\n" + "\n".join(sample.options)
    text = VERIPO_TEMPLATE.format(Question=question)
    return text + VERIPO_NUMERIC_SUFFIX if sample.problem_type in NUMERIC_PROBLEM_TYPES else text


PROMPT_STYLES: dict[str, Callable[[Sample], str]] = {"veripo": veripo_prompt, "videor1": videor1_prompt}


def build_messages(sample: Sample, *, n_images: int, has_video: bool, style: str = "veripo") -> list[dict]:
    """Chat messages for one sample: one user turn with image parts, a video part, then the prompt text."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {sorted(PROMPT_STYLES)}")
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    if has_video:
        content.append({"type": "video"})
    content.append({"type": "text", "text": PROMPT_STYLES[style](sample)})
    return [{"role": "user", "content": content}]


def encode_prompt(policy_or_processor, sample: Sample, *, frames: np.ndarray | None = None,
                  images: list | None = None, video_fps: float | None = None,
                  style: str = "veripo") -> dict[str, Any]:
    """Model inputs (batch of 1) for ``sample`` through the chat template, ready for ``model.generate``.

    Args:
        policy_or_processor: a :class:`~veripo.models.loading.Policy` or a ``VeripoProcessor``.
        sample: the question; its ``video``/``images`` paths are not read here: pass the decoded media.
        frames: (T, H, W, 3) uint8 frames of the sample's video (``veripo.data.media.load_video(...).frames``).
        images: PIL images or (H, W, 3) uint8 arrays of the sample's images.
        video_fps: the sampled frame rate (``VideoFrames.fps``), for Qwen2.5-VL's temporal positions.
        style: a key of ``PROMPT_STYLES``.
    Returns:
        input_ids (1, L), attention_mask (1, L), mm_token_type_ids (1, L) and the vision tensors.
    Raises:
        ValueError: the sample names a video but no frames were given (or frames without a video), or a
            different number of images than the sample lists.
    """
    processor = getattr(policy_or_processor, "processor", policy_or_processor)
    images = list(images or [])
    if (sample.video is not None) != (frames is not None):
        raise ValueError(f"sample {sample.id!r}: video={sample.video!r} but frames "
                         f"{'were' if frames is not None else 'were not'} given")
    if sample.images and len(images) != len(sample.images):
        raise ValueError(f"sample {sample.id!r}: lists {len(sample.images)} images, {len(images)} given")
    messages = build_messages(sample, n_images=len(images), has_video=frames is not None, style=style)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text, images=images or None, videos=[frames] if frames is not None else None,
                     video_fps=video_fps)
