"""A sample -> its prompt's model inputs: decode the media (frames sampled and resized by the run's media
settings, cached on disk by ``veripo.data.media``), build the chat prompt, run the processor.

Encoded prompts are memoised in memory per sample id: a rollout group, its training pass, a later epoch and
the DPO pairs of the same question all reuse one encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from veripo.data.media import load_image, load_video
from veripo.data.records import Sample
from veripo.models.prompts import encode_prompt


class SampleEncoder:
    """``encoder(sample) -> dict`` of model inputs (batch of one). Raises ``veripo.data.media.MediaError``
    naming the file when a sample's media cannot be read.

    Args:
        processor: a ``VeripoProcessor`` (``Policy.processor``).
        media: a ``veripo.config.MediaConfig`` (fps, max_frames, min_frames, min_pixels, max_pixels).
        style: the prompt style (``veripo.models.prompts.PROMPT_STYLES``).
        cache_dir: the decoded-frame cache folder (None: decode every time).
        memo_size: encoded prompts kept in memory (least recently used dropped first).
    """

    def __init__(self, processor: Any, media: Any, *, style: str = "veripo", cache_dir: str | None = None,
                 memo_size: int = 4096) -> None:
        self.processor, self.media, self.style, self.cache_dir = processor, media, style, cache_dir
        self.memo_size = memo_size
        self._memo: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __call__(self, sample: Sample) -> dict[str, Any]:
        hit = self._memo.get(sample.id)
        if hit is not None:
            self._memo.move_to_end(sample.id)
            return hit
        frames, fps = None, None
        if sample.video is not None:
            video = load_video(sample.video, fps=self.media.fps, max_frames=self.media.max_frames,
                               min_frames=self.media.min_frames, min_pixels=self.media.min_pixels,
                               max_pixels=self.media.max_pixels, cache_dir=self.cache_dir,
                               factor=self.processor.resize_factor)
            frames, fps = video.frames, video.fps
        images = [load_image(p, min_pixels=self.media.min_pixels, max_pixels=self.media.max_pixels,
                             factor=self.processor.resize_factor) for p in sample.images]
        encoded = encode_prompt(self.processor, sample, frames=frames, images=images, video_fps=fps, style=self.style)
        self._memo[sample.id] = encoded
        if len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return encoded
