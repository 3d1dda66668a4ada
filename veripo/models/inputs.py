"""A sample -> its prompt's model inputs: decode the media (frames sampled and resized by the run's media
settings, cached on disk by ``veripo.data.media``), build the chat prompt, run the processor.

Encoded prompts are memoised in memory per sample id: a rollout group, its training pass, a later epoch and
the DPO pairs of the same question all reuse one encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from veripo.config import ModelConfig
from veripo.data.media import load_image, load_video
from veripo.data.records import Sample
from veripo.errors import UnusableSample
from veripo.models.prompts import encode_prompt

DEFAULT_MAX_PROMPT_TOKENS: int = ModelConfig.max_prompt_tokens


class PromptTooLong(UnusableSample):
    """A sample whose prompt (text and visual tokens) is longer than the limit; skipped and counted."""


class SampleEncoder:
    """``encoder(sample) -> dict`` of model inputs (batch of one). Raises ``veripo.data.media.MediaError``
    naming the file when a sample's media cannot be read, and ``PromptTooLong`` when the prompt has more
    than ``max_prompt_tokens`` tokens (both ``UnusableSample``: runs skip and count them).

    Args:
        processor: a ``VeripoProcessor`` (``Policy.processor``).
        media: a ``veripo.config.MediaConfig`` (fps, max_frames, min_frames, min_pixels, max_pixels).
        style: the prompt style (``veripo.models.prompts.PROMPT_STYLES``).
        cache_dir: the decoded-frame cache folder (None: decode every time).
        memo_size: encoded prompts kept in memory (least recently used dropped first).
        max_prompt_tokens: the longest prompt encoded (``model.max_prompt_tokens``).
    """

    def __init__(self, processor: Any, media: Any, *, style: str = "veripo", cache_dir: str | None = None,
                 memo_size: int = 4096, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> None:
        self.processor, self.media, self.style, self.cache_dir = processor, media, style, cache_dir
        self.max_prompt_tokens = max_prompt_tokens
        self.memo_size = memo_size
        self._memo: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. for ``veripo.eval.workers``) without its memo: the copy encodes afresh."""
        return {**self.__dict__, "_memo": OrderedDict()}

    def __call__(self, sample: Sample, shuffle_seed: int | None = None) -> dict[str, Any]:
        """The sample's prompt inputs; with ``shuffle_seed`` its video's frames in a seeded random order (the
        temporally shuffled prompt of Video-R1's T-GRPO; timestamps stay in place, as there)."""
        key = sample.id if shuffle_seed is None else f"{sample.id}#shuffled:{shuffle_seed}"
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            return hit
        frames, fps = None, None
        if sample.video is not None:
            video = load_video(sample.video, fps=self.media.fps, max_frames=self.media.max_frames,
                               min_frames=self.media.min_frames, min_pixels=self.media.min_pixels,
                               max_pixels=self.media.max_pixels, cache_dir=self.cache_dir,
                               factor=self.processor.resize_factor)
            frames, fps = video.frames, video.fps
            if shuffle_seed is not None:
                frames = frames[shuffled_order(len(frames), shuffle_seed)]
        images = [load_image(p, min_pixels=self.media.min_pixels, max_pixels=self.media.max_pixels,
                             factor=self.processor.resize_factor) for p in sample.images]
        encoded = encode_prompt(self.processor, sample, frames=frames, images=images, video_fps=fps, style=self.style)
        length = int(encoded["input_ids"].shape[-1])
        if length > self.max_prompt_tokens:
            raise PromptTooLong(f"sample {sample.id!r}: the prompt has {length} tokens, above the limit "
                                f"{self.max_prompt_tokens} (model.max_prompt_tokens)")
        self._memo[key] = encoded
        if len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return encoded


def shuffled_order(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``n`` frames (``torch.randperm``, as Video-R1 draws it)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
