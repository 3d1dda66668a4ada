"""A small byte-level BPE tokenizer trained offline, carrying Qwen2.5-VL's special tokens and chat template.

The tiny models must speak the same protocol as a real Qwen2.5-VL checkpoint: the same special token
strings (``<|im_start|>``, ``<|vision_start|>``, ``<|video_pad|>`` ...), the same chat template and the same
byte-level pre-tokenisation, so every other layer (prompt building, the processor's placeholder expansion,
the rollout engine, the verifier) runs unchanged on a 7B directory. Only the vocabulary is small: a BPE
trained with HF ``tokenizers`` on an embedded corpus of the words our synthetic video tasks and prompts use.
"""

from __future__ import annotations

import itertools

# Qwen2.5-VL's special tokens, in the order of its tokenizer_config.json ``added_tokens_decoder``
# (ids 151643..151656 there, appended after the BPE vocabulary here as well).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen2.5's added tokens that are not "special" (they survive skip_special_tokens when decoding).
QWEN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Placeholders and delimiters of vision inputs: never valid in a sampled response.
VISION_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2.5-VL-Instruct's chat_template.json, verbatim: a default system turn, then per message either a string
# or a list of parts where image/video parts become <|vision_start|><|image_pad|/|video_pad|><|vision_end|>.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words of the synthetic video tasks, the prompt templates (veripo.models.prompts) and reasoning chains.
_TASK_WORDS = (
    "red green blue yellow orange purple white black gray pink brown cyan magenta "
    "square circle triangle star dot ball box line shape object objects "
    "left right up down top bottom center middle front back behind above below near far "
    "moves moving move moved stays still static direction first last before after then next "
    "count counting how many number total one two three four five six seven eight nine ten "
    "zero once twice times frame frames video image picture clip second seconds "
    "bigger smaller larger faster slower appears disappears color colour which what where when "
    "is are the a an of in on to and or not it its this that there each every same different"
)
_PROMPT_WORDS = (
    "Question Options Answer answer think Please provide only single option letter e.g. A B C D E F etc "
    "within tags numerical value 42 3.14 transcribe text from image/video clearly your final "
    "must be number LaTeX format reasoning process here detailed between and then give "
    "let me think wait Hmm oh I see let's break it down so therefore because so the answer is "
    "thinking about this question as if you were a human pondering deeply Engage internal dialogue "
    "using expressions such other natural language thought It's encouraged include self-reflection "
    "or verification You helpful assistant user system"
)
_TEMPLATES = (
    "<think> {a} </think><answer> {b} </answer>",
    "<think>\nLet me think. The {c} {s} {m} {d}. So the answer is {L}.\n</think>\n<answer> {L} </answer>",
    "<answer> ${n}$ </answer>",
    "Which direction does the {c} {s} move?\nOptions:\nA. left\nB. right\nC. up\nD. down\n",
    "How many {c} {s}s appear in the video? Please provide the numerical value (e.g., 42 or 3.14).",
    "What colour is the {s} in frame {n}? {L}. {c}",
    "{n} + {n2} = {n3}. {n3} {s}s. Wait, let me count again: {n2}.",
)


def training_corpus() -> list[str]:
    """Deterministic lines for BPE training: the vocabulary words, and filled templates that cover tags,
    digits, option letters, colours, shapes, directions and counting words."""
    words = (_TASK_WORDS + " " + _PROMPT_WORDS).split()
    colours = _TASK_WORDS.split()[:12]
    shapes = ("square", "circle", "triangle", "star", "dot", "ball")
    moves = ("moves", "stays", "appears", "disappears")
    dirs = ("left", "right", "up", "down")
    lines = [" ".join(words), " ".join(w.capitalize() for w in words)]
    for i, (c, s, m, d) in enumerate(itertools.product(colours, shapes, moves, dirs)):
        template = _TEMPLATES[i % len(_TEMPLATES)]
        n, n2 = i % 100, (i * 7) % 13
        lines.append(template.format(a=f"{c} {s} {m} {d}", b="ABCD"[i % 4], c=c, s=s, m=m, d=d,
                                     L="ABCDEF"[i % 6], n=n, n2=n2, n3=n + n2))
    lines.extend(f"{k} {k * 1.5} {k * 10 + 3} -{k}" for k in range(200))
    # The synthetic tasks' own text (questions, options, reference chains) and the prompt templates around
    # it, so that the demo's prompts and reasoning chains are short in tokens (faster on a CPU).
    from veripo.data.synthetic import synthetic_corpus
    from veripo.models.prompts import VERIPO_TEMPLATE, VIDEOR1_QUESTION_TEMPLATE

    task_lines = synthetic_corpus(n_per_kind=60)
    lines.extend(task_lines)
    lines.extend(VERIPO_TEMPLATE.format(Question=q) for q in task_lines[::25])
    lines.extend(VIDEOR1_QUESTION_TEMPLATE.format(Question=q) for q in task_lines[::50])
    return lines


def train_tokenizer(vocab_size: int = 1536):
    """A ``PreTrainedTokenizerFast``: byte-level BPE of at most ``vocab_size`` ids (including the 256 byte tokens)
    trained on :func:`training_corpus`, then Qwen's special and added tokens and chat template.

    Deterministic: the corpus is fixed and BPE training breaks ties by order, so two calls give the same
    vocabulary (tested). eos is ``<|im_end|>`` and pad ``<|endoftext|>``, as in Qwen2.5-VL-Instruct.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    core.train_from_iterator(training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, clean_up_tokenization_spaces=False, padding_side="left"  # decoder-only: pad left
    )
    tokenizer.add_special_tokens({
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": list(QWEN_SPECIAL_TOKENS),
    })
    tokenizer.add_tokens(list(QWEN_ADDED_TOKENS))
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer
