"""How one prompt's responses are cut into forward/backward micro-batches: by count, by a token budget, or both.

A micro-batch holds ``units`` of one prompt's responses: single responses for GRPO, (chosen, rejected) pairs of
rows for DPO. Two limits, each optional:

- ``size``: at most this many units per micro-batch (``grpo.micro_batch_size``, ``dpo.micro_batch_size``);
- ``max_tokens``: at most this many tokens per micro-batch (``*.max_tokens_per_micro_batch``), counted as what
  the micro-batch's forward holds: with the shared prefix, the prompt's tokens (text and visual placeholder
  tokens: the K/V every continuation attends to) plus ``rows x longest response`` (rows are right-padded to
  the longest); per sequence, ``rows x (prompt + longest response)``.

Both given: every micro-batch keeps both (the stricter one decides where it is cut). Neither: one micro-batch.
With a budget, units are packed longest first (first-fit decreasing on the padded length, so a long response
does not pad many short ones) into as few micro-batches as the budget allows; a unit whose own tokens exceed
the budget runs alone and is counted in ``over_budget`` (the caller warns): never an error. Without a budget
the cut is the count-based one, in order, as before.

The plan only decides which rows run together: the caller's loss carries the whole batch's normalisers
(``BatchNorms``, ``PairNorms``), so every plan gives the same gradient (tests/recipes/test_token_budget_on_cpu.py).
"""

from __future__ import annotations

from typing import NamedTuple


class MicroBatchPlan(NamedTuple):
    """Row indices of each micro-batch (units kept whole, rows of a unit adjacent), and how many units ran alone
    because their own tokens exceed the budget."""

    chunks: list[list[int]]
    over_budget: int


def micro_batch_tokens(prompt_tokens: int, rows: int, longest: int, shared_prefix: bool) -> int:
    """Tokens one micro-batch's forward holds: ``rows`` responses padded to ``longest`` after one prompt of
    ``prompt_tokens`` (its K/V once with the shared prefix, in every row without)."""
    return prompt_tokens + rows * longest if shared_prefix else rows * (prompt_tokens + longest)


def plan_micro_batches(prompt_tokens: int, lengths: list[int], *, size: int | None = None,
                       max_tokens: int | None = None, shared_prefix: bool = True, unit: int = 1) -> MicroBatchPlan:
    """Cut the rows of responses ``lengths`` (tokens per row; ``unit`` consecutive rows form one unit that stays
    in one micro-batch) into micro-batches within ``size`` units and ``max_tokens`` tokens (see the module
    docstring; either may be None)."""
    if size is not None and size < 1:
        raise ValueError(f"micro-batch size must be >= 1 or None; got {size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"micro-batch token budget must be >= 1 or None; got {max_tokens}")
    if len(lengths) % unit:
        raise ValueError(f"{len(lengths)} rows do not make whole units of {unit}")
    units = [list(range(u * unit, (u + 1) * unit)) for u in range(len(lengths) // unit)]
    if max_tokens is None:
        step = size or max(1, len(units))
        return MicroBatchPlan([sum(units[i : i + step], []) for i in range(0, len(units), step)], 0)
    longest = [max(lengths[r] for r in rows) for rows in units]
    order = sorted(range(len(units)), key=lambda u: (-longest[u], u))  # longest first, ties in order
    chunks: list[list[int]] = []  # unit indices; the first unit of a chunk is its longest
    over = 0
    for u in order:
        if micro_batch_tokens(prompt_tokens, unit, longest[u], shared_prefix) > max_tokens:
            chunks.append([u])
            over += 1
            continue
        for chunk in chunks:
            head = longest[chunk[0]]
            # the chunk's head is its longest unit, so the padded width stays; an over-budget head never fits more
            fits = micro_batch_tokens(prompt_tokens, (len(chunk) + 1) * unit, head, shared_prefix) <= max_tokens
            if fits and (size is None or len(chunk) < size):
                chunk.append(u)
                break
        else:
            chunks.append([u])
    return MicroBatchPlan([[r for u in chunk for r in units[u]] for chunk in chunks], over)

