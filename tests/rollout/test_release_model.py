"""The engine on the project's own tiny release model: `build_tiny` -> `load_policy` -> `encode_prompt`.

The other rollout tests use an in-memory byte-tokenizer model; this one checks the same contract through the
path users take, with the trained BPE tokenizer, the chat template and the numpy video patchifier.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veripo.data.records import Sample
from veripo.rollout import HFRolloutEngine, SamplingParams


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from veripo.models.loading import load_policy
    from veripo.models.tiny import build_tiny

    return load_policy(build_tiny(tmp_path_factory.mktemp("tiny") / "model", "tiny"))


@pytest.fixture(scope="module")
def prompt(policy):
    from veripo.models.prompts import encode_prompt

    sample = Sample(id="q1", problem="Which way does the square move?", problem_type="multiple choice",
                    answer="A", options=["A. left", "B. right"], video="clip.mp4", data_type="video")
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 56, 56, 3), dtype=np.uint8)
    return dict(encode_prompt(policy, sample, frames=frames, video_fps=2.0))


def test_greedy_matches_generate_and_logprobs_match_teacher_forcing(policy, prompt):
    model, tokenizer = policy.model, policy.tokenizer
    engine = HFRolloutEngine(model, tokenizer)
    names = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    assert set(tokenizer.convert_tokens_to_ids(names)) <= set(engine.banned_token_ids)
    response = engine.generate([prompt], SamplingParams(1, 1.0, 1.0, 20, stop_strings=(), greedy=True))[0].responses[0]

    P = prompt["input_ids"].shape[1]
    expected = model.generate(**prompt, max_new_tokens=20, do_sample=False, suppress_tokens=engine.banned_token_ids,
                              eos_token_id=engine.eos_token_ids)[0, P:].tolist()
    assert response.token_ids == expected[: len(response.token_ids)]
    ids = torch.tensor([response.token_ids])
    inputs = {**prompt, "input_ids": torch.cat([prompt["input_ids"], ids], 1),
              "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(ids)], 1)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits[0, P - 1 : -1]
    teacher = torch.log_softmax(logits.float(), -1).gather(1, ids.T).view(-1)
    assert torch.allclose(torch.tensor(response.logprobs), teacher, atol=1e-4, rtol=0)


def test_sampling_is_seeded_and_stops_on_the_real_tokenizer(policy, prompt):
    engine = HFRolloutEngine(policy.model, policy.tokenizer)
    params = SamplingParams(4, 1.0, 0.95, 24, seed=7)
    first = engine.generate([prompt, prompt], params)
    again = engine.generate([prompt, prompt], params)
    assert [r.token_ids for g in first for r in g.responses] == [r.token_ids for g in again for r in g.responses]
    assert first[0].responses[0].token_ids != first[1].responses[0].token_ids  # each question has its own stream
    for group in first:
        for r in group.responses:
            assert r.finish_reason in ("eos", "stop", "length") and 1 <= len(r.token_ids) <= 24
            assert r.finish_reason != "length" or len(r.token_ids) == 24
