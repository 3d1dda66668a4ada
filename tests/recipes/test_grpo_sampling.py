"""DAPO's dynamic sampling refill against a transcription of verl's DAPO trainer loop, the question stream, and
the overlong reward shaping against DAPO's equation and verl's reward manager."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from veripo.data.records import Sample
from veripo.recipes.grpo_sampling import draw_questions, fill_batch
from veripo.rewards.group import overlong_penalty


@dataclass
class FakeGroup:
    uid: int
    rewards: list[float]
    kept: bool = True


def verl_dapo_batch(stream: list[list[FakeGroup]], prompt_bsz: int, max_num_gen_batches: int):
    """verl's ``RayDAPOTrainer.fit`` filtering (recipe/dapo/dapo_ray_trainer.py), transcribed: keep the prompts
    whose metric has std > 0 (or a single sample), accumulate generation batches until ``prompt_bsz`` prompts are
    kept, then align the batch to the first ``prompt_bsz``; past ``max_num_gen_batches`` it raises."""
    batch: list[FakeGroup] = []
    num_prompt_in_batch = num_gen_batches = 0
    for new_batch in stream:
        num_gen_batches += 1
        kept = [g for g in new_batch if len(set(g.rewards)) > 1 or len(g.rewards) == 1]
        num_prompt_in_batch += len(kept)
        batch.extend(kept)
        if num_prompt_in_batch < prompt_bsz:
            if max_num_gen_batches <= 0 or num_gen_batches < max_num_gen_batches:
                continue
            raise ValueError("Generated too many")
        return batch[:prompt_bsz], num_gen_batches
    raise AssertionError("stream exhausted")


def _stream(rng: random.Random, batches: int, size: int, equal_share: float) -> list[list[FakeGroup]]:
    uid = iter(range(10**6))
    return [[FakeGroup(next(uid), [1.0] * 4 if rng.random() < equal_share else [rng.choice([0.0, 1.0]) for _ in range(3)] + [0.5])
             for _ in range(size)] for _ in range(batches)]


def _our_batch(stream: list[list[FakeGroup]], size: int, max_rounds: int):
    def sample_round(round_: int, first: int) -> list[FakeGroup]:
        assert first == round_ * size  # the round's questions follow the previous rounds' in the stream
        groups = stream[round_]
        for g in groups:  # what assign_advantages decides with dynamic sampling
            g.kept = not (len(set(g.rewards)) == 1 and len(g.rewards) > 1)
        return groups

    return fill_batch(sample_round, size, dynamic=True, max_rounds=max_rounds)


def test_refill_matches_verls_dapo_loop_on_random_streams():
    rng = random.Random(0)
    resampled = short = 0
    for _ in range(300):
        size, max_rounds = rng.choice([2, 4, 8]), rng.choice([0, 1, 3])
        stream = _stream(rng, max_rounds + 1, size, equal_share=rng.choice([0.0, 0.3, 0.7]))
        ours = _our_batch(stream, size, max_rounds)
        assert ours.drawn == size * (ours.rounds + 1)
        try:
            expected, gen_batches = verl_dapo_batch(stream, size, max_rounds + 1)
        except ValueError:  # verl stops the run; we train on what was kept and report the shortfall
            short += 1
            assert ours.shortfall > 0 and ours.rounds == max_rounds
            assert [g.uid for g in ours.groups if g.kept] == [g.uid for round_ in stream for g in round_
                                                              if len(set(g.rewards)) > 1]
            continue
        assert [g.uid for g in ours.groups if g.kept] == [g.uid for g in expected]
        assert ours.rounds == gen_batches - 1 and ours.shortfall == 0
        resampled += ours.rounds
    assert resampled > 50 and short > 10  # the cases exercise both the refill and the bound


def test_refill_by_hand_counts():
    # round 0: 1 of 3 kept; round 1: 3 kept -> batch full with 3, one kept group left over (surplus)
    stream = [[FakeGroup(0, [1.0, 1.0]), FakeGroup(1, [0.0, 1.0]), FakeGroup(2, [0.0, 0.0])],
              [FakeGroup(3, [0.0, 1.0]), FakeGroup(4, [1.0, 0.0]), FakeGroup(5, [1.0, 0.5])]]
    batch = _our_batch(stream, 3, max_rounds=5)
    assert (batch.rounds, batch.drawn, batch.dropped, batch.surplus, batch.shortfall) == (1, 6, 2, 1, 0)
    assert [g.uid for g in batch.groups if g.kept] == [1, 3, 4]
    # without dynamic sampling one round is the batch, however few it keeps
    once = fill_batch(lambda r, first: stream[0], 3, dynamic=False, max_rounds=5)
    assert (once.rounds, once.drawn, once.shortfall) == (0, 3, 2)


def test_the_question_stream_continues_across_batches_and_epochs():
    samples = [Sample(id=str(i), problem="p", problem_type="numerical", answer="1") for i in range(5)]
    whole = [s.id for s in draw_questions(samples, 0, 13, seed=1, stage="g")]
    parts = [s.id for start, n in ((0, 4), (4, 3), (7, 6)) for s in draw_questions(samples, start, n, 1, "g")]
    assert parts == whole
    assert sorted(whole[:5]) == sorted(whole[5:10]) == [str(i) for i in range(5)]  # every epoch is a permutation
    assert whole[:5] != whole[5:10]


def verl_overlong_reward(valid_response_length: int, max_resp_len: int, buffer_len: int, factor: float) -> float:
    """verl's ``DAPORewardManager.__call__`` overlong branch (verl/workers/reward_manager/dapo.py), transcribed."""
    expected_len = max_resp_len - buffer_len
    exceed_len = valid_response_length - expected_len
    return min(-exceed_len / buffer_len * factor, 0)


def test_overlong_penalty_is_dapos_soft_punishment():
    # DAPO eq. (13) with L_max 20, L_cache 4: 0 up to 16 tokens, then (16 - |y|) / 4, reaching -1 at 20
    assert [overlong_penalty(n, 20, 4) for n in (0, 16, 17, 18, 20)] == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert overlong_penalty(18, 20, 4, factor=0.5) == -0.25
    for n in range(0, 21):
        for buffer, factor in ((1, 1.0), (4, 1.0), (7, 0.3), (20, 2.0)):
            assert overlong_penalty(n, 20, buffer, factor) == pytest.approx(verl_overlong_reward(n, 20, buffer, factor))
    assert overlong_penalty(20, 20, 0) == 0.0  # off
    with pytest.raises(ValueError, match="longer than max_tokens"):
        overlong_penalty(3, 4, 5)
