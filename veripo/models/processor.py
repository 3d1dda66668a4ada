"""The processor for the Qwen vision-language families, built explicitly: tokenizer + PIL image processor + numpy video
patchifier (no torchvision, no AutoProcessor).

Why not ``Qwen2_5_VLProcessor``: without torchvision its ``video_processor=None`` raises and
``AutoProcessor.from_pretrained`` silently returns only the tokenizer. This class does the same job for one
prompt: expand each ``<|image_pad|>`` / ``<|video_pad|>`` into ``grid_t*grid_h*grid_w / merge_size**2``
copies (transformers' ``replace_image_token`` / ``replace_video_token``), tokenize, and add
``mm_token_type_ids`` (0 text, 1 image, 2 video: ``ProcessorMixin.create_mm_token_type_ids``). What differs by
family comes from ``veripo.models.families``: how a video placeholder expands (Qwen3-VL / Qwen3.5: one
timestamped ``<|vision_start|>`` ... ``<|vision_end|>`` block per frame) and extra video inputs (Qwen2.5-VL:
``second_per_grid_ts = temporal_patch_size / fps``, ``Qwen2_5_VLProcessor._process_videos``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veripo.models.families import family_of_type
from veripo.models.families.base import VISION_END, VISION_START
from veripo.models.video_processor import CLIP_MEAN, CLIP_STD, patchify_video

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VIDEO_CONFIG_NAME = "video_preprocessor_config.json"
DEFAULT_VIDEO_FPS = 2.0  # qwen-vl-utils' FPS; used for second_per_grid_ts when the caller gives none
_PLACEHOLDER = re.compile(re.escape(IMAGE_TOKEN) + "|" + re.escape(VIDEO_TOKEN))
# a video placeholder with the chat template's start/end pair around it (families whose expansion brings its own)
_WRAPPED = re.compile(re.escape(IMAGE_TOKEN) + "|" + re.escape(VISION_START + VIDEO_TOKEN + VISION_END) + "|"
                      + re.escape(VIDEO_TOKEN))


@dataclass(frozen=True)
class VideoSettings:
    """What the video patchifier needs; saved as transformers' ``video_preprocessor_config.json`` keys."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoSettings:
        known = {k: data[k] for k in cls.__dataclass_fields__ if data.get(k) is not None}
        for key in ("image_mean", "image_std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)


class VeripoProcessor:
    """Turns one prompt text with vision placeholders, video frames and images into model inputs.

    Attributes:
        tokenizer: the model's tokenizer (with the chat template).
        image_processor: transformers' ``Qwen2VLImageProcessorPil`` (smart-resize, PIL, no torchvision).
        video: :class:`VideoSettings` for :func:`patchify_video`.
        model_type: the checkpoint's ``model_type``; its family (``veripo.models.families``) decides how
            videos expand and which extra inputs they get (Qwen2.5-VL: ``second_per_grid_ts``).
    """

    def __init__(self, tokenizer, image_processor, video: VideoSettings | None = None,
                 model_type: str = "qwen2_5_vl") -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.video = video or VideoSettings()
        self.model_type = model_type
        self.family = family_of_type(model_type)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (IMAGE_TOKEN, VIDEO_TOKEN) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the vision placeholder tokens {missing}: not a Qwen-VL tokenizer")
        self.image_token_id = vocab[IMAGE_TOKEN]
        self.video_token_id = vocab[VIDEO_TOKEN]

    @property
    def resize_factor(self) -> int:
        """Frames and images must have sides that are multiples of this (patch size x merge size)."""
        return self.video.patch_size * self.video.merge_size

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, messages: list[dict], **kwargs) -> str:
        """The tokenizer's chat template as text (``tokenize=False``); one placeholder per image/video part."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    def __call__(self, text: str, *, images: list | None = None, videos: list[np.ndarray] | None = None,
                 video_fps: list[float] | float | None = None) -> dict[str, Any]:
        """Model inputs for one prompt, as a batch of 1.

        Args:
            text: the prompt with one ``<|image_pad|>`` per image and one ``<|video_pad|>`` per video
                (as the chat template writes them), in the order of ``images`` / ``videos``.
            images: PIL images or (H, W, 3) uint8 arrays; resized by the image processor's smart-resize.
            videos: (T, H, W, 3) uint8 frame stacks, H and W multiples of 28 (already smart-resized).
            video_fps: frames per second of each sampled video (``second_per_grid_ts``, frame timestamps).
        Returns:
            torch tensors: input_ids (1, L), attention_mask (1, L), mm_token_type_ids (1, L); with images
            pixel_values (N_img_patches, 3*tp*p*p) and image_grid_thw (n_images, 3); with videos
            pixel_values_videos (N_vid_patches, 3*tp*p*p), video_grid_thw (n_videos, 3) and the family's
            extra video inputs (Qwen2.5-VL: second_per_grid_ts (n_videos,)).
        Raises:
            ValueError: when the number of placeholders and of images/videos differ, or a video is malformed.
        """
        import torch

        images, videos = list(images or []), list(videos or [])
        found = _PLACEHOLDER.findall(text)
        n_img, n_vid = found.count(IMAGE_TOKEN), found.count(VIDEO_TOKEN)
        if n_img != len(images) or n_vid != len(videos):
            raise ValueError(
                f"prompt has {n_img} {IMAGE_TOKEN} and {n_vid} {VIDEO_TOKEN} placeholders but {len(images)} "
                f"images and {len(videos)} videos were given"
            )
        out: dict[str, Any] = {}
        image_tokens: list[int] = []
        if images:
            processed = self.image_processor(images=images, return_tensors="np")
            out["pixel_values"] = torch.from_numpy(np.ascontiguousarray(processed["pixel_values"], np.float32))
            out["image_grid_thw"] = torch.from_numpy(np.asarray(processed["image_grid_thw"], np.int64))
            merge = self.image_processor.merge_size
            image_tokens = [int(g.prod()) // merge**2 for g in out["image_grid_thw"]]
        video_texts: list[str] = []
        if videos:
            s = self.video
            pixels, grids = [], []
            for index, frames in enumerate(videos):
                try:
                    pv, thw = patchify_video(
                        frames, patch_size=s.patch_size, temporal_patch_size=s.temporal_patch_size,
                        merge_size=s.merge_size, image_mean=s.image_mean, image_std=s.image_std,
                        rescale_factor=s.rescale_factor,
                    )
                except ValueError as e:
                    raise ValueError(f"video {index}: {e}") from None
                pixels.append(pv)
                grids.append(thw)
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate(pixels))
            out["video_grid_thw"] = torch.from_numpy(np.concatenate(grids))
            fps = _per_video(video_fps, len(videos))
            video_texts = [self.family.video_placeholder(grid, s.merge_size, rate, s.temporal_patch_size,
                                                         num_frames=len(frames))
                           for grid, rate, frames in zip(out["video_grid_thw"].tolist(), fps, videos)]
            out.update(self.family.video_inputs(fps, s.temporal_patch_size))
        expanded = _expand_placeholders(text, [IMAGE_TOKEN * n for n in image_tokens], video_texts,
                                        self.family.video_placeholder_replaces_wrapper)
        input_ids = torch.tensor([self.tokenizer(expanded, add_special_tokens=False)["input_ids"]])
        mm_types = torch.zeros_like(input_ids)
        mm_types[input_ids == self.image_token_id] = 1
        mm_types[input_ids == self.video_token_id] = 2
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": mm_types,
            **out,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Tokenizer files, ``preprocessor_config.json`` (image) and ``video_preprocessor_config.json`` in
        transformers' format, so a torchvision install can load the directory with ``AutoProcessor`` too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        video = asdict(self.video) | {
            "video_processor_type": self.family.video_processor_type,
            "processor_class": self.family.processor_class,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "size": dict(self.image_processor.size),
        }
        (directory / VIDEO_CONFIG_NAME).write_text(json.dumps(video, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, model_type: str = "qwen2_5_vl") -> VeripoProcessor:
        """Load from a model directory (ours or a released checkpoint of a family in ``veripo.models.families``).

        Video settings come from ``video_preprocessor_config.json`` when present, else from
        ``preprocessor_config.json`` (older checkpoints keep both there)."""
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        directory = Path(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if getattr(tokenizer, "chat_template", None) is None:
            for name in ("chat_template.jinja", "chat_template.json"):
                if (directory / name).exists():
                    raw = (directory / name).read_text()
                    tokenizer.chat_template = json.loads(raw)["chat_template"] if name.endswith("json") else raw
                    break
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(directory)
        config_file = directory / VIDEO_CONFIG_NAME
        if not config_file.exists():
            config_file = directory / "preprocessor_config.json"
        video = VideoSettings.from_dict(json.loads(config_file.read_text()))
        return cls(tokenizer, image_processor, video, model_type=model_type)


def _per_video(fps: list[float] | float | None, n: int) -> list[float]:
    if fps is None:
        return [DEFAULT_VIDEO_FPS] * n
    values = [float(fps)] * n if isinstance(fps, (int, float)) else [float(f) for f in fps]
    if len(values) != n or any(not f > 0 for f in values):
        raise ValueError(f"video_fps must be one positive number or one per video ({n}), got {fps!r}")
    return values


def _expand_placeholders(text: str, image_texts: list[str], video_texts: list[str], replace_wrapper: bool) -> str:
    """Replace the k-th image/video placeholder by its expansion, in order; with ``replace_wrapper`` a video's
    expansion also replaces the ``<|vision_start|>``/``<|vision_end|>`` pair around its placeholder."""
    images, videos = iter(image_texts), iter(video_texts)

    def expand(match: re.Match[str]) -> str:
        return next(images) if match.group(0) == IMAGE_TOKEN else next(videos)

    return (_WRAPPED if replace_wrapper else _PLACEHOLDER).sub(expand, text)
