"""The Qwen-VL families' grouped forward: log-probs of G responses to one (video) prompt, shared prefix or not.

Shared prefix (default): the prompt, vision tower included, runs once; the G responses run against its KV
cache expanded to G. Loss and every parameter gradient equal the per-sequence computation (tested in fp32),
and the prompt is never encoded G times. Facts this relies on (transformers 5.23, see DESIGN.md):

- M-RoPE positions: the prompt's from ``model.model.get_rope_index`` with its ``delta``; response token ``t``
  sits at ``P + t + delta`` on all three axes, passed explicitly as ``[3, G, R]`` position ids.
- The first response token's logit comes from the prompt pass's last position.
- Gradient checkpointing drops ``past_key_values`` inside checkpointed layers: the caches in
  ``prefix_cache`` never change after the prompt pass, so they may be kept there (see that module).

Response micro-batches (``backward_group``): every micro-batch runs against the same prompt K/V and last
hidden state, cut from the prompt's graph as leaf tensors; each micro-batch backward accumulates parameter
gradients and the gradient at that cut, and one final backward sends the accumulated cut gradient through the
prompt pass. By the chain rule this equals ``backward(retain_graph=True)`` per micro-batch, with the prompt's
backward (and its checkpoint recomputation) run once instead of once per micro-batch.

``shared_prefix=False`` is the baseline every RL trainer uses: G rows ``[prompt, response]``, full forward. A
family whose prompt state is more than keys and values (Qwen3.5's linear-attention layers,
``ModelFamily.shared_prefix_exact``) always runs that baseline: exact, without the saving.
Inputs: ``prompt_inputs`` is the processor's output for ONE prompt (``input_ids [1, P]``, ``attention_mask``,
``pixel_values_videos``, ``video_grid_thw``, ``mm_token_type_ids``; images likewise); responses are
right-padded ``response_ids [G, R]`` with ``response_mask [G, R]``.

How the passes run is the caller's ``TrainingPasses`` (plain autograd by default): a parallel strategy
(``veripo.parallel``) hands in its own when every forward is a collective. The log-prob maths of the last
hidden states is ``veripo.algos.logprobs.token_log_probs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from veripo.algos.logprobs import LogProbs, token_log_probs
from veripo.models.cache_api import cache_kwargs
from veripo.models.families import family_of
from veripo.models.micro_batches import MicroBatchPlan, plan_micro_batches
from veripo.models.prefix_cache import ReadOnlyPrefixCache, WriteOnceCache, cache_kept_under_checkpointing
from veripo.models.vision_cache import vision_inputs

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
# Loss callback of ``backward_group``: (log_probs [g, R], entropy [g, R] or None, rows [g] long) -> the
# micro-batch's share of the group loss (shares must add up to the group loss, e.g. divide by group tokens).
GroupLossFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


class GroupStats(NamedTuple):
    """What ``backward_group`` did: ``loss`` (sum of micro-batch losses, detached scalar), ``log_probs``/``entropy``
    ``[G, R]`` detached, ``micro_batches`` count."""

    loss: torch.Tensor
    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    micro_batches: int


class _PromptState(NamedTuple):
    keys: list[torch.Tensor]  # per layer [1, kv_heads, P, head_dim]
    values: list[torch.Tensor]
    last_hidden: torch.Tensor  # [1, 1, hidden]: predicts the first response token
    length: int  # P
    delta: torch.Tensor  # [1, 1] M-RoPE offset of text positions after the vision tokens

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.last_hidden]

    def cut(self) -> _PromptState:
        """The same state as fresh leaf tensors, so continuations' backward stops (and accumulates) here."""
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in self.tensors()]
        n = len(self.keys)
        return _PromptState(leaves[:n], leaves[n : 2 * n], leaves[-1], self.length, self.delta)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return family_of(model).decoder_layers(model)


def shares_prefix(model: nn.Module, shared_prefix: bool) -> bool:
    """Whether the responses run against one prompt pass: asked for, and exact for the model's family."""
    return shared_prefix and family_of(model).shared_prefix_exact


class TrainingPasses:
    """How ``backward_group`` runs its passes: plain autograd here. A parallel strategy whose forwards are
    collectives hands in its own (``veripo.parallel``): DeepSpeed ZeRO-3 routes every forward and backward
    through its engine.

    ``collective_layers``: every forward through the decoder layers is a collective (FSDP2, ZeRO-3), so every
    rank runs the same passes, a one-token response included. ``collective_vision``: the vision tower's
    weights are partitioned too (ZeRO-3), so every prompt pass runs it."""

    collective_layers = False
    collective_vision = False

    def forward(self, compute: Callable[[], object]) -> object:
        """Run one forward segment (``compute`` calls the model and returns its outputs)."""
        return compute()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def backward_through(self, tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """Backpropagate ``grads`` from ``tensors`` (the prompt pass, after its continuations)."""
        torch.autograd.backward(tensors, grads)


PLAIN_PASSES = TrainingPasses()


@contextmanager
def _vision_company(model: nn.Module, prompt: Mapping[str, torch.Tensor],
                    passes: TrainingPasses) -> Iterator[list[torch.Tensor]]:
    """Under DeepSpeed ZeRO-3 the vision tower's weights are partitioned too, so every rank must run it in every
    prompt pass, at the same point: a prompt without images or videos runs it on one blank image of the smallest
    size just before the language model (where a real prompt's vision tower runs, after the token embeddings).
    Yields a list that then holds the output; add ``0 * out.sum()`` to the result (exact zeros)."""
    company: list[torch.Tensor] = []
    if not passes.collective_vision or not hasattr(model.model, "visual"):
        yield company
        return
    if prompt.get("pixel_values") is not None and prompt.get("pixel_values_videos") is not None:
        raise ValueError("DeepSpeed ZeRO-3: a prompt with both images and a video runs the vision tower twice, "
                         "which the other ranks cannot match; give each question images or a video, not both")
    if prompt.get("pixel_values") is not None or prompt.get("pixel_values_videos") is not None:
        yield company
        return
    visual = model.model.visual

    def run_vision_tower(_module: nn.Module, _args: object) -> None:
        config = visual.config
        merge = config.spatial_merge_size
        width = config.in_channels * config.temporal_patch_size * config.patch_size**2
        device = prompt["input_ids"].device
        pixels = torch.zeros(merge * merge, width, dtype=next(visual.parameters()).dtype, device=device)
        company.append(visual(pixels, grid_thw=torch.tensor([[1, merge, merge]], device=device)).pooler_output)

    # prepend: before DeepSpeed's own pre-hook on the language model, so the module order matches a real prompt's
    hook = model.model.language_model.register_forward_pre_hook(run_vision_tower, prepend=True)
    try:
        yield company
    finally:
        hook.remove()


def _plus_zero_times(hidden: torch.Tensor, company: list[torch.Tensor]) -> torch.Tensor:
    return hidden + 0.0 * sum(out.sum() for out in company) if company else hidden


def _single_prompt(prompt_inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate one prompt and drop padding positions (a processor may left-pad)."""
    input_ids = prompt_inputs.get("input_ids")
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(f"prompt_inputs['input_ids'] must have shape [1, P] (one prompt); got {shape}")
    if "mm_token_type_ids" not in prompt_inputs and any(prompt_inputs.get(k) is not None for k in VISION_KEYS):
        raise ValueError("prompt_inputs has vision inputs but no 'mm_token_type_ids' (needed for 3-D M-RoPE)")
    keep = prompt_inputs.get("attention_mask", torch.ones_like(input_ids))[0].bool()
    prompt = {k: v for k, v in prompt_inputs.items() if k in VISION_KEYS and v is not None}
    prompt["input_ids"] = input_ids[:, keep]
    prompt["mm_token_type_ids"] = prompt_inputs.get("mm_token_type_ids", torch.zeros_like(input_ids))[:, keep]
    return prompt


def _check_responses(response_ids: torch.Tensor, response_mask: torch.Tensor) -> None:
    if response_ids.dim() != 2 or response_ids.shape != response_mask.shape or response_ids.shape[1] == 0:
        raise ValueError(
            f"response_ids and response_mask must both be [G, R] with R >= 1; got {tuple(response_ids.shape)} "
            f"and {tuple(response_mask.shape)}"
        )


def prompt_positions(model: nn.Module, prompt: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids ``[3, 1, P]`` of one prompt and the ``delta`` ``[1, 1]`` of the text after it."""
    input_ids = prompt["input_ids"]
    if prompt.get("video_grid_thw") is None and prompt.get("image_grid_thw") is None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).view(1, 1, -1).expand(3, 1, -1)
        return positions, torch.zeros(1, 1, dtype=torch.long, device=input_ids.device)
    return model.model.get_rope_index(
        input_ids,
        prompt["mm_token_type_ids"],
        image_grid_thw=prompt.get("image_grid_thw"),
        video_grid_thw=prompt.get("video_grid_thw"),
        second_per_grid_ts=prompt.get("second_per_grid_ts"),
    )


def _prompt_pass(model: nn.Module, prompt: dict[str, torch.Tensor], passes: TrainingPasses) -> _PromptState:
    positions, delta = prompt_positions(model, prompt)
    layers = decoder_layers(model)
    cache = WriteOnceCache(len(layers))
    with cache_kept_under_checkpointing(layers), _vision_company(model, prompt, passes) as company:
        hidden = model.model(**vision_inputs(model, prompt), position_ids=positions, use_cache=True,
                             **cache_kwargs(model.model, cache)).last_hidden_state
    hidden = _plus_zero_times(hidden, company)
    keys, values = cache.captured()
    return _PromptState(keys, values, hidden[:, -1:], prompt["input_ids"].shape[1], delta)


def _continuation(
    model: nn.Module, state: _PromptState, response_ids: torch.Tensor, response_mask: torch.Tensor, with_entropy: bool,
    temperature: float, passes: TrainingPasses,
) -> LogProbs:
    """Log-probs ``[g, R]`` of responses ``[g, R]`` against a prompt state (its K/V expanded to g, no copy)."""
    g, length = response_ids.shape
    hidden = state.last_hidden.expand(g, -1, -1)
    # One-token responses need no layer pass, but with sharded layers every rank must run one (a collective):
    # then the token runs through the layers and adds exact zeros.
    idle_pass = length == 1 and passes.collective_layers
    if length > 1 or idle_pass:
        inputs = response_ids[:, :-1] if length > 1 else response_ids  # the last token predicts nothing we need
        width = inputs.shape[1]
        positions = torch.arange(state.length, state.length + width, device=inputs.device) + state.delta[0, 0]
        attention = torch.cat([response_mask.new_ones(g, state.length), response_mask[:, :width]], dim=1)
        layers = decoder_layers(model)
        with cache_kept_under_checkpointing(layers):
            out = model.model(
                input_ids=inputs,
                attention_mask=attention,
                position_ids=positions.view(1, 1, -1).expand(3, g, -1),
                use_cache=True,
                **cache_kwargs(model.model, ReadOnlyPrefixCache(state.keys, state.values, g)),
            )
        if idle_pass:
            hidden = hidden + 0.0 * out.last_hidden_state.sum()
        else:
            hidden = torch.cat([hidden, out.last_hidden_state], dim=1)
    return token_log_probs(model.lm_head, hidden, response_ids, with_entropy, temperature)


def _per_sequence(
    model: nn.Module,
    prompt: dict[str, torch.Tensor],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    with_entropy: bool,
    temperature: float,
    passes: TrainingPasses,
) -> LogProbs:
    """Baseline: g rows ``[prompt, response]`` through the whole model, vision tower included, g times."""
    g, length = response_ids.shape
    prompt_ids = prompt["input_ids"]
    size = prompt_ids.shape[1]
    input_ids = torch.cat([prompt_ids.expand(g, -1), response_ids], dim=1)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.cat([torch.ones_like(prompt_ids).expand(g, -1), response_mask.long()], dim=1),
        "mm_token_type_ids": torch.cat(
            [
                prompt["mm_token_type_ids"].expand(g, -1),
                torch.zeros_like(response_ids, dtype=prompt["mm_token_type_ids"].dtype),
            ],
            dim=1,
        ),
    }
    # the pixels (or the cached tower outputs) once per row
    inputs.update(vision_inputs(model, {k: v for k, v in prompt.items() if k in VISION_KEYS}, copies=g))
    if prompt.get("second_per_grid_ts") is not None:
        inputs["second_per_grid_ts"] = prompt["second_per_grid_ts"].repeat(g)
    with _vision_company(model, prompt, passes) as company:
        hidden = _plus_zero_times(model.model(**inputs, use_cache=False).last_hidden_state, company)
    return token_log_probs(model.lm_head, hidden[:, size - 1 : size - 1 + length], response_ids, with_entropy,
                           temperature)


def _row_chunks(count: int, micro_batch: int | None, device: torch.device) -> list[torch.Tensor]:
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1 or None; got {micro_batch}")
    return list(torch.arange(count, device=device).split(micro_batch or count))


def micro_batch_count(responses: int, micro_batch: int | None) -> int:
    """How many micro-batches ``backward_group`` runs for ``responses`` responses cut by count alone."""
    return len(_row_chunks(responses, micro_batch, torch.device("cpu")))


def micro_batch_plan(model: nn.Module, prompt_tokens: int, lengths: list[int], *, micro_batch: int | None = None,
                     max_tokens: int | None = None, shared_prefix: bool = True, unit: int = 1) -> MicroBatchPlan:
    """``plan_micro_batches`` for this model: its tokens counted as the forward ``backward_group`` will run
    (shared prefix only where the family's is exact, ``shares_prefix``). Pass its ``chunks`` to
    ``backward_group``; ``len(chunks)`` is the call's micro-batch count for the ranks' lockstep."""
    return plan_micro_batches(prompt_tokens, lengths, size=micro_batch, max_tokens=max_tokens,
                              shared_prefix=shares_prefix(model, shared_prefix), unit=unit)


def work_tokens(model: nn.Module, prompt_tokens: int, lengths: list[int], shared_prefix: bool = True) -> int:
    """Tokens a ``backward_group`` call runs through the model: the prompt once and each response (shared
    prefix), or the prompt with every response (per sequence): the cost ranks are balanced by."""
    if shares_prefix(model, shared_prefix):
        return prompt_tokens + sum(lengths)
    return sum(prompt_tokens + n for n in lengths)


def _rows_log_probs(
    model: nn.Module,
    prompt: dict[str, torch.Tensor],
    state: _PromptState | None,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    with_entropy: bool,
    temperature: float,
    passes: TrainingPasses,
) -> LogProbs:
    """Log-probs of a micro-batch of responses: against the prompt ``state``, or per sequence when it is None."""
    if state is None:
        return _per_sequence(model, prompt, response_ids, response_mask, with_entropy, temperature, passes)
    return _continuation(model, state, response_ids, response_mask, with_entropy, temperature, passes)


def group_log_probs(
    model: nn.Module,
    prompt_inputs: Mapping[str, torch.Tensor],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    shared_prefix: bool = True,
    micro_batch: int | None = None,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> LogProbs:
    """Log-probs ``[G, R]`` (and entropy) of G responses to one prompt, differentiable when grad is enabled.

    ``temperature`` scales the logits first: the policy that sampled the responses at that temperature
    (as TRL and verl train GRPO).

    ``micro_batch`` bounds the responses per forward. To train with micro-batches use ``backward_group``
    (it frees each micro-batch's graph); for old/reference log-probs use ``response_log_probs``.
    """
    _check_responses(response_ids, response_mask)
    prompt = _single_prompt(prompt_inputs)
    state = _prompt_pass(model, prompt, PLAIN_PASSES) if shares_prefix(model, shared_prefix) else None
    parts = [
        _rows_log_probs(model, prompt, state, response_ids[rows], response_mask[rows], with_entropy, temperature,
                        PLAIN_PASSES)
        for rows in _row_chunks(response_ids.shape[0], micro_batch, response_ids.device)
    ]
    entropy = torch.cat([p.entropy for p in parts]) if with_entropy else None
    return LogProbs(torch.cat([p.log_probs for p in parts]), entropy)


def response_log_probs(
    model: nn.Module,
    prompt_inputs: Mapping[str, torch.Tensor],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    **options: bool | int | float | None,
) -> LogProbs:
    """No-grad ``group_log_probs`` (same options): old-policy or reference log-probs ``[G, R]``."""
    with torch.no_grad():
        return group_log_probs(model, prompt_inputs, response_ids, response_mask, **options)


def backward_group(
    model: nn.Module,
    prompt_inputs: Mapping[str, torch.Tensor],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    loss_fn: GroupLossFn,
    *,
    micro_batch: int | None = None,
    shared_prefix: bool = True,
    with_entropy: bool = False,
    temperature: float = 1.0,
    min_micro_batches: int = 0,
    passes: TrainingPasses = PLAIN_PASSES,
    chunks: list[list[int]] | None = None,
) -> GroupStats:
    """Forward and backward of one group's loss, accumulating into the parameters' ``.grad``.

    Args:
        loss_fn: ``(log_probs [g, R], entropy [g, R] | None, rows [g]) -> scalar`` for the micro-batch of
            responses ``rows``; the shares of all micro-batches must add up to the group loss.
        micro_batch: responses per forward/backward (None: all G at once).
        shared_prefix: False runs the per-sequence baseline, one full forward per micro-batch (so does a
            family without an exact shared prefix, ``shares_prefix``).
        temperature: log-probs under ``softmax(logits / temperature)`` (the sampling policy's).
        min_micro_batches: run zero-loss micro-batches (the first rows again) after the real ones up to this
            count, so that every rank of a weight-sharded run runs the same passes (``idle_backward``).
        passes: how forwards and backwards run (a parallel strategy's ``passes``; plain autograd by default).
        chunks: the rows of each micro-batch (``micro_batch_plan``: a token budget, pairs kept together), in
            place of ``micro_batch``.
    Returns:
        ``GroupStats`` (the parameters' gradients are the effect that matters); its log-probs in row order.

    Each micro-batch runs its rows cut to their longest response (the padding columns after it change no
    log-prob: attention is causal), and ``loss_fn`` gets them padded back to ``R`` with zeros.
    """
    _check_responses(response_ids, response_mask)
    prompt = _single_prompt(prompt_inputs)
    state = passes.forward(lambda: _prompt_pass(model, prompt, passes)) if shares_prefix(model, shared_prefix) else None
    cut = state.cut() if state is not None else None
    total = torch.zeros((), device=response_ids.device)
    count, width = response_ids.shape
    log_probs = torch.zeros(count, width, device=response_ids.device)
    entropies = torch.zeros(count, width, device=response_ids.device) if with_entropy else None
    if chunks is None:
        chunks = _row_chunks(count, micro_batch, response_ids.device)
    else:
        chunks = [torch.tensor(rows, dtype=torch.long, device=response_ids.device) for rows in chunks]

    def rows_log_probs(rows: torch.Tensor, with_entropy: bool) -> LogProbs:
        used = max(1, int(response_mask[rows].sum(-1).max()))
        out = passes.forward(lambda: _rows_log_probs(model, prompt, cut, response_ids[rows, :used],
                                                     response_mask[rows, :used], with_entropy, temperature, passes))
        pad = (0, width - used)
        return LogProbs(torch.nn.functional.pad(out.log_probs, pad),
                        None if out.entropy is None else torch.nn.functional.pad(out.entropy, pad))

    for rows in chunks:
        out = rows_log_probs(rows, with_entropy)
        loss = loss_fn(out.log_probs, out.entropy, rows)
        passes.backward(loss)
        total += loss.detach()
        log_probs[rows] = out.log_probs.detach().to(log_probs.dtype)
        if out.entropy is not None:
            entropies[rows] = out.entropy.detach().to(entropies.dtype)
    for _ in range(min_micro_batches - len(chunks)):
        out = rows_log_probs(chunks[0], False)
        passes.backward(out.log_probs.sum() * 0.0)
    if state is not None:
        pairs = [(t, leaf.grad) for t, leaf in zip(state.tensors(), cut.tensors()) if leaf.grad is not None]
        if pairs or passes.collective_layers:  # collective passes: every rank runs this one too
            passes.backward_through([t for t, _ in pairs], [g for _, g in pairs])
    return GroupStats(total, log_probs, entropies, len(chunks))


def idle_backward(model: nn.Module, micro_batches: int, shared_prefix: bool, passes: TrainingPasses) -> None:
    """A zero-loss ``backward_group`` on a one-token prompt with ``micro_batches`` micro-batches: the same
    collectives as a real call, exact zeros for every gradient (a rank with less work keeps the others'
    collectives company; ``veripo.parallel``'s lockstep)."""
    device = next(model.parameters()).device
    prompt = {"input_ids": torch.zeros(1, 1, dtype=torch.long, device=device)}
    response = torch.zeros(1, 2, dtype=torch.long, device=device)
    backward_group(model, prompt, response, torch.ones(1, 2, device=device),
                   lambda log_probs, _entropy, _rows: log_probs.sum() * 0.0,
                   shared_prefix=shared_prefix, min_micro_batches=micro_batches, passes=passes)
