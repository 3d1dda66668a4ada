"""Rollouts on transformers: prefill each prompt once, expand its KV cache to G, sample G continuations.

`model.generate(num_return_sequences=G)` copies the prompt G times and runs the LLM prefill over all G
copies (it already runs the vision tower once). Here the prompt, video included, goes through the model once
per question; its `DynamicCache` is then repeated G times along the batch (`batch_repeat_interleave`) and
the G responses are decoded against it. Several questions share one prefill batch (left padding); a
question leaves the batch as soon as all its G responses have finished.

Positions follow Qwen2-VL's M-RoPE: the prompt's 3-D positions and its `delta` come from
`model.model.get_rope_index`; the t-th response token sits at `P + t + delta` on all three axes
(P = the prompt's unpadded length), passed explicitly as (3, N, 1) `position_ids` at each step.

A family whose prompt state is more than keys and values (Qwen3.5's linear-attention layers:
`ModelFamily.shared_prefix_exact` False; transformers' `LinearAttentionLayer` has neither
`batch_repeat_interleave` nor `batch_select_indices`) prefills each prompt G times instead, and finished
questions stay in the batch until the last one ends: exact, without the saving.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veripo.models.cache_api import cache_kwargs, output_cache
from veripo.models.families import family_of
from veripo.models.vision_cache import vision_inputs
from veripo.rollout.engine import GeneratedResponse, GroupOutput, SamplingParams, check_prompt, question_seed
from veripo.rollout.sampling import completes_stop_string, end_of_text_ids, next_token_distribution, vision_token_ids

_MEDIA_KEYS = ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw")


class HFRolloutEngine:
    """A `RolloutEngine` for Qwen2-VL / Qwen2.5-VL models on transformers.

    Features: prefill once per question, KV cache expanded to G; temperature, top-p, greedy and repetition
    penalty with transformers' semantics; vision special tokens never sampled; stop at a stop string or an
    end-of-text token; per-token log-probs; seeded, reproducible sampling (one `torch.Generator` per
    question, so a question's responses do not depend on which other questions share its batch, up to
    the float rounding of left padding).

    Log-probs: `logprobs[t]` is `log_softmax(raw logits)[token_t]` at temperature 1, before any masking,
    penalty or top-p: the log-probability of the sampled token under the policy itself. They equal a
    teacher-forced forward of prompt + response, so they serve as GRPO's old log-probs while the policy
    has not changed since sampling.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` or `Qwen2VLForConditionalGeneration` (eval mode is
            set for the duration of `generate` and restored after).
        tokenizer: its tokenizer (or a processor with a `.tokenizer`).
        max_batch_questions: questions prefilled and decoded together.
    """

    def __init__(self, model, tokenizer, *, max_batch_questions: int = 4) -> None:
        if max_batch_questions < 1:
            raise ValueError(f"max_batch_questions must be >= 1, got {max_batch_questions}")
        if not hasattr(getattr(model, "model", None), "get_rope_index"):
            raise ValueError(
                f"HFRolloutEngine needs a Qwen2-VL / Qwen2.5-VL *ForConditionalGeneration model (with "
                f"`.model.get_rope_index`), got {type(model).__name__}; unwrap DDP/accelerate wrappers first"
            )
        self.model = model
        self.expands_cache = family_of(model).shared_prefix_exact  # else: G prefills, no batch selection
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.max_batch_questions = max_batch_questions
        self.banned_token_ids = vision_token_ids(model.config, self.tokenizer)
        self.eos_token_ids = end_of_text_ids(getattr(model, "generation_config", None), self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])

    def sync_weights(self, model, version: int) -> None:
        """Nothing to do: this engine samples from the live policy (`model` must be the one it was built on)."""
        if model is not self.model:
            raise ValueError("HFRolloutEngine samples from the model it was built on; build one for this model")

    def release(self) -> None:
        """Nothing to free: the engine holds no memory between calls."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[dict[str, torch.Tensor]], params: SamplingParams,
                 seeds: Sequence[int] | None = None) -> list[GroupOutput]:
        """Sample `params.num_generations` responses per prompt; see `RolloutEngine.generate`.

        `seeds` gives each question its own generator seed (so a question's samples do not depend on its
        position in the batch, e.g. across data-parallel ranks); by default they derive from `params.seed`.
        """
        for index, prompt in enumerate(prompts):
            check_prompt(prompt, index)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: got {len(seeds)} seeds for {len(prompts)} prompts")
        base_seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        was_training = self.model.training
        self.model.eval()
        try:
            outputs: list[GroupOutput] = []
            for start in range(0, len(prompts), self.max_batch_questions):
                chunk = list(prompts[start : start + self.max_batch_questions])
                chunk_seeds = [int(seeds[start + i]) if seeds is not None else question_seed(base_seed, start + i)
                               for i in range(len(chunk))]
                outputs.extend(self._generate_chunk(chunk, params, chunk_seeds))
            return outputs
        finally:
            self.model.train(was_training)

    def _generate_chunk(self, prompts: list[dict[str, torch.Tensor]], params: SamplingParams, seeds: list[int]):
        device = self.model.device
        G, Q = params.num_generations, len(prompts)
        copies = 1 if self.expands_cache else G  # rows each prompt takes in the prefill batch
        batch = collate_prompts([p for p in prompts for _ in range(copies)], self.pad_token_id, device)
        cache, logits, next_position = self._prefill_and_expand(batch, G // copies)
        prompt_lengths = batch["attention_mask"].sum(-1)[::copies]  # (Q,)
        attention_mask = batch["attention_mask"].repeat_interleave(G // copies, dim=0)  # (Q*G, P)
        vocab = logits.shape[-1]
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[[i for i in self.banned_token_ids if i < vocab]] = True
        eos = torch.tensor(self.eos_token_ids, device=device)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(Q * G, vocab, dtype=torch.bool, device=device)
            # Pad positions repeat the row's last prompt token so that padding marks nothing new as seen.
            prompt_ids = torch.where(batch["attention_mask"] == 1, batch["input_ids"], batch["input_ids"][:, -1:])
            seen.scatter_(1, prompt_ids.repeat_interleave(G // copies, dim=0), True)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        stop_window = max((len(s.encode("utf-8")) for s in params.stop_strings), default=0) + 1

        tokens: list[list[int]] = [[] for _ in range(Q * G)]
        logprobs: list[list[float]] = [[] for _ in range(Q * G)]
        finish: list[str | None] = [None] * (Q * G)
        alive_questions = list(range(Q))  # questions whose rows are still in the batch, in batch order
        temperature = 1.0 if params.greedy else params.temperature  # the sampling policy's, see GeneratedResponse
        for step in range(params.max_new_tokens):
            policy_logprobs = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
            processed = next_token_distribution(
                logits, banned=banned, seen=seen, repetition_penalty=params.repetition_penalty,
                temperature=temperature, top_p=1.0 if params.greedy else params.top_p,
            )
            if params.greedy:
                sampled = processed.argmax(dim=-1)
            else:  # one generator per question: its draws do not depend on the other questions in the batch
                probs = processed.softmax(dim=-1).view(len(alive_questions), G, vocab)
                sampled = torch.cat([
                    torch.multinomial(probs[i], 1, generator=generators[q]).view(G)
                    for i, q in enumerate(alive_questions)
                ])
            sampled_logprobs = policy_logprobs.gather(1, sampled[:, None]).view(-1)

            rows = [q * G + g for q in alive_questions for g in range(G)]
            for row, token, logprob, is_eos in zip(
                rows, sampled.tolist(), sampled_logprobs.tolist(), torch.isin(sampled, eos).tolist()
            ):
                if finish[row] is None:
                    tokens[row].append(token)
                    logprobs[row].append(logprob)
                    finish[row] = self._finish_reason(tokens[row], is_eos, params, stop_window)

            still = [i for i, q in enumerate(alive_questions) if any(finish[q * G + g] is None for g in range(G))]
            if not still:
                break
            if len(still) < len(alive_questions) and self.expands_cache:  # drop questions all of whose G ended
                keep = torch.tensor([i * G + g for i in still for g in range(G)], device=device)
                cache.batch_select_indices(keep)
                sampled, attention_mask, next_position = sampled[keep], attention_mask[keep], next_position[keep]
                seen = seen[keep] if seen is not None else None
                alive_questions = [alive_questions[i] for i in still]
            if seen is not None:
                seen.scatter_(1, sampled[:, None], True)

            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(sampled), 1)], dim=1)
            positions = (next_position + step).view(1, -1, 1).expand(3, -1, 1)
            logits = self.model(
                input_ids=sampled[:, None], attention_mask=attention_mask, position_ids=positions,
                use_cache=True, **cache_kwargs(self.model, cache),
            ).logits[:, -1].float()

        groups = []
        for q in range(Q):
            responses = [
                GeneratedResponse(
                    token_ids=tokens[q * G + g],
                    text=self.tokenizer.decode(tokens[q * G + g], skip_special_tokens=True),
                    logprobs=logprobs[q * G + g],
                    finish_reason=finish[q * G + g] or "length",
                )
                for g in range(G)
            ]
            groups.append(GroupOutput(responses=responses, prompt_tokens=int(prompt_lengths[q])))
        return groups


    def _finish_reason(self, tokens: list[int], is_eos: bool, params: SamplingParams, stop_window: int):
        """Why a response whose newest token is `tokens[-1]` ends now, or None if it goes on. Only the last
        `stop_window` tokens are decoded: a stop string completed by the newest token lies within them."""
        if is_eos:
            return "eos"
        if params.stop_strings and completes_stop_string(self.tokenizer.decode(tokens[-stop_window:]),
                                                         params.stop_strings):
            return "stop"
        return "length" if len(tokens) == params.max_new_tokens else None

    def _prefill_and_expand(self, batch: dict[str, torch.Tensor], G: int):
        """Run the Q prompts (vision tower and LLM) once and repeat the result G times.

        Returns:
            cache: the prompts' `DynamicCache`, batch Q*G (rows q*G .. q*G+G-1 belong to question q).
            logits: (Q*G, V) float32 next-token logits after each prompt.
            next_position: (Q*G,) M-RoPE position of the first response token, `P_q + delta_q`.
        """
        position_ids, rope_delta = self.model.model.get_rope_index(
            batch["input_ids"],
            batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch.get("video_grid_thw"),
            second_per_grid_ts=batch.get("second_per_grid_ts"),
            attention_mask=batch["attention_mask"],
        )
        prefill = self.model(**vision_inputs(self.model, batch), position_ids=position_ids, use_cache=True,
                             logits_to_keep=1)
        cache = output_cache(prefill)
        if G > 1:
            cache.batch_repeat_interleave(G)
        next_position = batch["attention_mask"].sum(-1) + rope_delta.view(-1)
        logits = prefill.logits[:, -1].float()
        return cache, logits.repeat_interleave(G, dim=0), next_position.repeat_interleave(G)


def collate_prompts(prompts: list[dict[str, torch.Tensor]], pad_token_id: int, device) -> dict[str, torch.Tensor]:
    """Left-pad Q batch-of-1 prompts into one batch and concatenate their media in prompt order.

    Returns:
        `input_ids`, `attention_mask`, `mm_token_type_ids` (Q, P_max), left padded; `pixel_values_videos` /
        `video_grid_thw` / `pixel_values` / `image_grid_thw` concatenated along dim 0 where any prompt has
        them; `second_per_grid_ts` (num_videos,) where any prompt has it (1.0 for videos without it).
    """
    length = max(p["input_ids"].shape[1] for p in prompts)

    def left_pad(key: str, value: int) -> torch.Tensor:
        rows = []
        for p in prompts:
            row = p[key] if key in p else torch.zeros_like(p["input_ids"])
            rows.append(torch.cat([row.new_full((1, length - row.shape[1]), value), row], dim=1))
        return torch.cat(rows).to(device)

    batch = {
        "input_ids": left_pad("input_ids", pad_token_id),
        "attention_mask": left_pad("attention_mask", 0),
        "mm_token_type_ids": left_pad("mm_token_type_ids", 0),
    }
    for key in _MEDIA_KEYS:
        parts = [p[key] for p in prompts if p.get(key) is not None]
        if parts:
            batch[key] = torch.cat(parts).to(device)
    if any(p.get("second_per_grid_ts") is not None for p in prompts):
        batch["second_per_grid_ts"] = torch.cat([
            torch.as_tensor(p["second_per_grid_ts"], dtype=torch.float).view(-1)
            if p.get("second_per_grid_ts") is not None
            else torch.ones(len(p["video_grid_thw"]) if p.get("video_grid_thw") is not None else 0)
            for p in prompts
        ]).to(device)
    return batch
