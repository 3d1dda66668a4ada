"""The trained BPE tokenizer: Qwen's special tokens, byte-level round trips, the chat template."""

from __future__ import annotations

import pytest

from veripo.models.tokenizer import (
    QWEN_ADDED_TOKENS,
    QWEN_SPECIAL_TOKENS,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def test_special_tokens_are_single_ids(tokenizer):
    for token in QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert len(set(tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)))) == len(QWEN_SPECIAL_TOKENS)


@pytest.mark.parametrize("text", [
    "<|im_start|>user\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>Which way?<|im_end|>\n",
    "<think> The red square moves right. </think><answer> $B$ </answer>",
    "unicode é漢字 🙂, tabs\tand  double  spaces, digits 3.14159 -42",
    "",
])
def test_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_corpus_words_are_compact(tokenizer):
    # the BPE learned the task vocabulary: common words are one token, not spelled out byte by byte
    for word in (" red", " square", " left", " answer", " think"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_training_is_deterministic(tokenizer):
    assert train_tokenizer().get_vocab() == tokenizer.get_vocab()


def test_chat_template_matches_qwen(tokenizer):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )
