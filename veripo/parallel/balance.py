"""Splitting an optimizer step's training work over data-parallel ranks by token count.

Every rank waits for the slowest in each optimizer step's gradient reduction, so the step's work (question
groups: one prompt pass and its responses each, kept whole on one rank) is split so that the largest rank's
tokens are as small as possible: multiway number partitioning. ``balanced_partition`` searches exhaustively
for small inputs (at most ``EXACT_ITEMS`` items: optimal) and otherwise takes the Karmarkar-Karp largest
differencing method, as verl does (verl/utils/seqlen_balancing.py, ``karmarkar_karp``, which EasyVideoR1 reuses
for its sequence-length balancing): repeatedly merge the two partial partitions whose spread is largest, pairing
the heavier parts of one with the lighter parts of the other.

Every rank computes the same split from the same gathered numbers (no collective), with ties broken by item
index, so the ranks agree on who trains what; a rank with less work still makes the same collective calls
(``ParallelStrategy.lockstep_calls`` pads its calls with idle ones).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

EXACT_ITEMS = 10  # up to this many items the partition is searched exhaustively (optimal); beyond, Karmarkar-Karp


def karmarkar_karp(weights: Sequence[float], parts: int) -> list[list[int]]:
    """Karmarkar-Karp's largest differencing method for ``parts``-way partitioning: item indices per part, each
    part's indices ascending, parts ordered by the smallest index they hold (empty parts last).

    Each item starts as a partial partition with the item in one part; the two partials with the largest spread
    (largest minus smallest part) are merged, the heaviest part of one with the lightest of the other, until
    one partial remains (Karmarkar & Karp 1982; k-way form as in verl's ``seqlen_balancing.karmarkar_karp``)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1; got {parts}")
    heap: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
    for i, w in enumerate(weights):
        partial = [(float(w), [i])] + [(0.0, []) for _ in range(parts - 1)]
        heapq.heappush(heap, (-float(w), i, partial))  # spread = w; index breaks ties (deterministic)
    while len(heap) > 1:
        _, first, a = heapq.heappop(heap)
        _, second, b = heapq.heappop(heap)
        heavy_first = sorted(a, key=lambda p: -p[0])
        light_first = sorted(b, key=lambda p: p[0])
        merged = [(x[0] + y[0], x[1] + y[1]) for x, y in zip(heavy_first, light_first)]
        sums = [m[0] for m in merged]
        heapq.heappush(heap, (-(max(sums) - min(sums)), min(first, second), merged))
    result = [sorted(items) for _, items in heap[0][2]] if heap else [[] for _ in range(parts)]
    return _canonical(result, parts)


def balanced_partition(weights: Sequence[float], parts: int) -> list[list[int]]:
    """Item indices per part minimising the largest part's total weight: exact up to ``EXACT_ITEMS`` items,
    Karmarkar-Karp beyond. Same order conventions as ``karmarkar_karp``."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1; got {parts}")
    if parts == 1:
        return [list(range(len(weights)))]
    best = karmarkar_karp(weights, parts)
    if len(weights) > EXACT_ITEMS:
        return best
    best_max = max(_loads(weights, best))
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))
    loads = [0.0] * parts
    chosen: list[list[int]] = [[] for _ in range(parts)]

    def search(k: int) -> None:  # branch and bound, heaviest items first
        nonlocal best, best_max
        if k == len(order):
            if max(loads) < best_max:
                best_max, best = max(loads), [sorted(c) for c in chosen]
            return
        item, tried = order[k], set()
        for p in range(parts):
            if loads[p] in tried or loads[p] + weights[item] >= best_max:
                continue  # parts with equal loads are interchangeable; a part past the best cannot improve it
            tried.add(loads[p])
            loads[p] += weights[item]
            chosen[p].append(item)
            search(k + 1)
            chosen[p].pop()
            loads[p] -= weights[item]

    search(0)
    return _canonical(best, parts)


def rank_split(weights: Sequence[float], world: int, balance: bool,
               positions: Sequence[int] | None = None) -> list[list[int]]:
    """Item indices each rank trains: ``balanced_partition`` of ``weights`` over ``world`` ranks, or without
    ``balance`` item ``i`` on rank ``positions[i] % world`` (default: its index; GRPO passes each group's
    question position, the split its sampling used). Balanced parts go to ranks in order (rank r: part r)."""
    if not balance:
        keys = range(len(weights)) if positions is None else positions
        return [[i for i, key in enumerate(keys) if key % world == r] for r in range(world)]
    return balanced_partition(weights, world)


def imbalance(weights: Sequence[float], split: list[list[int]]) -> float:
    """Largest rank's total over the mean rank's total (1.0: perfectly even; ``world``: one rank does it all);
    1.0 for no work."""
    loads = _loads(weights, split)
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def _loads(weights: Sequence[float], split: list[list[int]]) -> list[float]:
    return [float(sum(weights[i] for i in part)) for part in split]


def _canonical(split: list[list[int]], parts: int) -> list[list[int]]:
    """Parts ordered by their smallest index, empty ones last (the same order on every rank)."""
    full = sorted((p for p in split if p), key=lambda p: p[0])
    return full + [[] for _ in range(parts - len(full))]
