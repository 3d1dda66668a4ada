"""The ranks' token-balanced split (``veripo.parallel.balance``): Karmarkar-Karp on hand cases, the exact search
against brute force on small cases, the by-question fallback, and the imbalance ratio."""

from __future__ import annotations

import itertools
import random

import pytest

from veripo.parallel.balance import (
    EXACT_ITEMS,
    balanced_partition,
    imbalance,
    karmarkar_karp,
    rank_split,
)


def loads(weights, split):
    return [sum(weights[i] for i in part) for part in split]


def brute_force_best(weights, parts):
    """The smallest possible largest part, over every assignment of items to parts."""
    return min(max(sum(w for w, p in zip(weights, assign) if p == k) for k in range(parts))
               for assign in itertools.product(range(parts), repeat=len(weights)))


def assert_a_partition(split, n, parts):
    assert len(split) == parts
    assert sorted(i for part in split for i in part) == list(range(n))


def test_karmarkar_karp_on_hand_cases():
    # two-way differencing: {8 | 7} (1), {6 | 5} (1), {4 | -} with {8 | 7} -> {4+7 | 8} (3), then with {6 | 5}:
    # {11+5 | 8+6}: largest part 16 of 30 (the optimum is 15)
    split = karmarkar_karp([8, 7, 6, 5, 4], 2)
    assert_a_partition(split, 5, 2)
    assert split == [[0, 2], [1, 3, 4]]
    assert loads([8, 7, 6, 5, 4], split) == [14, 16]
    # three-way: one heavy item alone, the rest share the other two parts evenly
    split = karmarkar_karp([9, 3, 3, 3, 3, 3, 3], 3)
    assert sorted(loads([9, 3, 3, 3, 3, 3, 3], split)) == [9, 9, 9]
    # more parts than items: the empty parts come last
    assert karmarkar_karp([5, 2], 4) == [[0], [1], [], []]
    assert karmarkar_karp([], 2) == [[], []]


def test_the_exact_search_finds_what_karmarkar_karp_misses():
    assert sorted(loads([8, 7, 6, 5, 4], balanced_partition([8, 7, 6, 5, 4], 2))) == [15, 15]


@pytest.mark.parametrize("parts", [2, 3, 4])
def test_balanced_partition_is_optimal_on_small_cases(parts):
    rng = random.Random(parts)
    for _ in range(40):
        n = rng.randint(1, 8 if parts < 4 else 7)
        weights = [rng.randint(1, 60) for _ in range(n)]
        split = balanced_partition(weights, parts)
        assert_a_partition(split, n, parts)
        assert max(loads(weights, split)) == brute_force_best(weights, parts), weights


def test_past_the_exact_size_karmarkar_karp_is_used_and_stays_near_the_optimum():
    rng = random.Random(0)
    for _ in range(5):
        weights = [rng.randint(1, 100) for _ in range(EXACT_ITEMS + 2)]
        split = balanced_partition(weights, 2)
        assert split == karmarkar_karp(weights, 2)
        assert_a_partition(split, len(weights), 2)
        # two-way Karmarkar-Karp is within 7/6 of the optimum (Fischetti & Martello 1987)
        assert max(loads(weights, split)) <= 7 / 6 * brute_force_best(weights, 2)


def test_the_split_is_the_same_for_the_same_numbers():
    weights = [5, 5, 5, 5, 3, 3]  # many equal optima: ties are broken by index, so every rank agrees
    split = balanced_partition(weights, 2)
    assert split == balanced_partition(list(weights), 2) == [[0, 2, 4], [1, 3, 5]]
    assert loads(weights, split) == [13, 11 + 2]


def test_rank_split_by_question_and_balanced():
    weights = [100, 10, 90, 20]
    assert rank_split(weights, 2, balance=False) == [[0, 2], [1, 3]]  # item i on rank i % world
    assert rank_split(weights, 2, balance=False, positions=[3, 4, 5, 6]) == [[1, 3], [0, 2]]
    balanced = rank_split(weights, 2, balance=True)
    assert sorted(loads(weights, balanced)) == [110, 110]
    assert rank_split(weights, 1, balance=True) == [[0, 1, 2, 3]]


def test_imbalance_is_the_largest_rank_over_the_mean():
    weights = [100, 10, 90, 20]
    assert imbalance(weights, [[0, 2], [1, 3]]) == pytest.approx(190 / 110)
    assert imbalance(weights, [[0, 1], [2, 3]]) == 1.0
    assert imbalance(weights, [[0, 1, 2, 3], []]) == 2.0  # one rank does everything: the world size
    assert imbalance([], [[], []]) == 1.0
