"""Bootstrap confidence intervals for a study's numbers: a table of per-item values, one row per seed and one
column per held-out item, resampled over both (seeds with replacement, and items with replacement).

A seed's value is the mean of its row; the statistic is the mean of the seeds' values. A replicate draws
seeds ``s*`` and items ``i*`` (the same items for every drawn seed, as the held-out set is the same for every
seed) and takes the mean over ``s*`` of each drawn seed's mean over ``i*``. An item a seed has no value for
(NaN: an inconsistency label exists only where that seed's answer had a chain and an answer) is left out of
that seed's means, not dropped for every seed; with no NaN the statistic is the plain mean of
``table[s*, i*]``. The interval is the percentile interval of ``n_boot`` replicates (Efron & Tibshirani 1993,
ch. 13). A difference between two tables of the same seeds and items (two arms, or two stages of one arm) is
*paired*: one draw of seeds and items serves both, so what the two share (a hard item, a lucky seed) cancels;
an item counts for a seed where both tables have it. ``unpaired_difference`` draws for each table alone: for
tables that share neither seeds nor items.

Draws come from ``numpy.random.default_rng(seed)``, so an interval is the same on every machine and run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 10_000
BOOT_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean and its ``level`` bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """The difference is significant at the interval's level: 0 lies outside ``[low, high]``."""
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _as_table(values) -> np.ndarray:
    table = np.asarray(values, dtype=float)
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
        raise ValueError(f"expected a table of shape (seeds, items) with at least one of each, got shape {table.shape}")
    if np.isinf(table).any():
        raise ValueError("the table holds an infinite value")
    if np.isnan(table).all(axis=1).any():
        raise ValueError("a seed (row) has no value (every item NaN); leave that seed out")
    return table


def seed_means(table: np.ndarray) -> np.ndarray:
    """Each seed's mean over the items it has a value for (NaN: no value)."""
    return np.nanmean(table, axis=1)


def table_mean(table: np.ndarray) -> float:
    """The statistic: the mean over seeds of each seed's mean over its items."""
    return float(seed_means(table).mean())


def draw_counts(n_seeds: int, n_items: int, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """How often each seed and each item is drawn in each replicate: arrays of shape (n_boot, n_seeds) and
    (n_boot, n_items), each row summing to n_seeds (n_items): drawing that many with replacement."""
    seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    items = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot)
    return seeds, items


def resampled_means(table: np.ndarray, seed_counts: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Each replicate's statistic (shape (n_boot,)) from the draw counts of ``draw_counts``:
    ``sum_s c_s m_s / S`` with ``m_s = sum_i d_i table[s, i] / sum_i d_i`` over the items seed ``s`` has a value
    for (``c`` the seed counts, ``d`` the item counts); with no NaN that is ``sum_s sum_i c_s d_i table[s, i] /
    (S * I)``. A replicate that draws none of a seed's items (possible only where the seed lacks most items)
    uses that seed's full mean."""
    present = ~np.isnan(table)
    filled = np.where(present, table, 0.0)
    sums = item_counts @ filled.T  # (n_boot, S): each seed's sum over the drawn items it has
    counts = item_counts @ present.T.astype(float)  # how many drawn items each seed has
    per_seed = np.where(counts > 0, sums / np.maximum(counts, 1.0), seed_means(table))
    return (seed_counts * per_seed).sum(axis=1) / table.shape[0]


def _interval(point: float, replicates: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high))


def mean_interval(values, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Interval:
    """The mean of a (seeds, items) table and its bootstrap interval over seeds and items."""
    table = _as_table(values)
    seeds, items = draw_counts(*table.shape, n_boot, np.random.default_rng(seed))
    return _interval(table_mean(table), resampled_means(table, seeds, items), level)


def paired_difference(a, b, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` for tables of the same seeds (rows) and items (columns), in the same order; each
    replicate draws one set of seeds and items for both tables, and an item counts for a seed where both
    tables have a value."""
    a, b = _as_table(a), _as_table(b)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs tables of one shape (same seeds and items), got {a.shape} "
                         f"and {b.shape}")
    return mean_interval(a - b, n_boot=n_boot, seed=seed, level=level)


def unpaired_difference(a, b, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> Interval:
    """``mean(a) - mean(b)`` where the tables share neither seeds nor items: each replicate draws for each
    table on its own (wider than the paired interval whenever the two tables move together)."""
    a, b = _as_table(a), _as_table(b)
    rng = np.random.default_rng(seed)
    a_draws = resampled_means(a, *draw_counts(*a.shape, n_boot, rng))
    b_draws = resampled_means(b, *draw_counts(*b.shape, n_boot, rng))
    return _interval(table_mean(a) - table_mean(b), a_draws - b_draws, level)
