"""The study's bootstrap (veripo.report.bootstrap) against hand-computed values on tiny tables."""

from __future__ import annotations

import numpy as np
import pytest

from veripo.report.bootstrap import (
    Interval,
    draw_counts,
    mean_interval,
    paired_difference,
    resampled_means,
    unpaired_difference,
)


def test_a_replicate_is_the_mean_over_the_drawn_seeds_and_items():
    table = np.array([[1.0, 2.0], [3.0, 4.0]])
    seeds = np.array([[2, 0], [1, 1], [0, 2]])
    items = np.array([[1, 1], [0, 2], [2, 0]])
    # seed 0 twice, both items: (1+2)*2/4; seeds 0 and 1, item 1 twice: (2*2 + 4*2)/4; seed 1 twice, item 0 twice
    assert resampled_means(table, seeds, items).tolist() == [1.5, 3.0, 3.0]


def test_a_seed_s_value_is_its_mean_over_the_items_it_has():
    nan = float("nan")
    table = np.array([[1.0, nan], [3.0, 5.0]])
    # seed 0: 1 (item 1 missing), seed 1: 4; the statistic is the mean of the seeds' values, 2.5, not the
    # mean over all present cells (3)
    assert mean_interval(table).mean == 2.5
    seeds = np.array([[1, 1], [1, 1], [2, 0]])
    items = np.array([[2, 0], [0, 2], [1, 1]])
    # item 0 twice: (1 + 3) / 2; item 1 twice: seed 0 drew none of its items and keeps its full mean 1,
    # seed 1 gives 5, so 3; seed 0 twice: 1
    assert resampled_means(table, seeds, items).tolist() == [2.0, 3.0, 1.0]
    # a paired difference counts an item for a seed where both tables have it
    assert paired_difference([[1.0, nan], [2.0, 2.0]], [[0.0, 7.0], [nan, 1.0]]) == Interval(1.0, 1.0, 1.0)


def test_draws_are_with_replacement_of_the_right_sizes():
    seeds, items = draw_counts(3, 5, 200, np.random.default_rng(0))
    assert seeds.shape == (200, 3) and items.shape == (200, 5)
    assert (seeds.sum(axis=1) == 3).all() and (items.sum(axis=1) == 5).all()
    assert (seeds.max(axis=1) > 1).any() and (items.max(axis=1) > 1).any()  # repeats happen


def test_paired_and_unpaired_differences_on_a_hand_computed_table():
    b = np.array([[0.0, 10.0]])  # one seed, two items
    a = b + 1.0  # every item one better
    # paired: every replicate's difference is exactly 1
    assert paired_difference(a, b) == Interval(1.0, 1.0, 1.0)
    # unpaired: mean(a*) in {1, 6, 11}, mean(b*) in {0, 5, 10}, each end with probability 1/4, so the
    # difference is -9 or 11 with probability 1/16 each (> 2.5%): the interval is [-9, 11]
    unpaired = unpaired_difference(a, b)
    assert (unpaired.mean, unpaired.low, unpaired.high) == (1.0, -9.0, 11.0)
    assert not unpaired.excludes_zero and paired_difference(a, b).excludes_zero


def test_the_resampling_covers_items():
    # two seeds that agree exactly: only resampling the items can move the mean; both items drawn as 0
    # (probability 1/4) gives 0, both as 10 gives 10
    table = [[0.0, 10.0], [0.0, 10.0]]
    assert mean_interval(table) == Interval(5.0, 0.0, 10.0)


def test_the_resampling_covers_seeds():
    # every item agrees within a seed: only resampling the seeds can move the mean
    table = [[0.0, 0.0], [10.0, 10.0]]
    assert mean_interval(table) == Interval(5.0, 0.0, 10.0)


def test_a_fixed_bootstrap_seed_gives_the_same_interval_and_another_seed_may_not():
    table = np.random.default_rng(3).random((4, 30))
    assert mean_interval(table) == mean_interval(table)
    assert mean_interval(table, seed=1) != mean_interval(table)
    interval = mean_interval(table)
    assert interval.low < interval.mean < interval.high and interval.half_width > 0


@pytest.mark.parametrize(("a", "b", "message"), [
    ([[1.0, 2.0]], [[1.0, 2.0, 3.0]], "one shape"),
    ([[1.0, float("inf")]], [[1.0, 2.0]], "infinite"),
    ([[1.0, float("nan")], [1.0, 2.0]], [[float("nan"), 2.0], [1.0, 2.0]], "no value"),
    ([1.0, 2.0], [1.0, 2.0], "shape"),
])
def test_tables_that_cannot_be_paired_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(a, b)


def test_the_interval_cuts_two_and_a_half_percent_from_each_tail():
    # one seed, items [0, 10, 10]: all three draws are 0 with probability 1/27 = 3.7% (between 2.5% and 5%),
    # so the 95% interval starts at 0 and the 90% one at one item of 10 in three (10/3)
    table = [[0.0, 10.0, 10.0]]
    assert mean_interval(table).low == 0.0 and mean_interval(table).high == 10.0
    assert mean_interval(table, level=0.90).low == pytest.approx(10 / 3)
