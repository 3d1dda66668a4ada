"""Video frames -> ``pixel_values_videos`` and ``video_grid_thw`` with numpy, no torchvision.

transformers' ``Qwen2VLVideoProcessor`` (also used by Qwen2.5-VL) needs torchvision, which does not import
beside the CPU torch we pin. Its work on frames that are already resized is small: rescale to [0, 1],
normalise with the CLIP mean/std, pad the frame count to a multiple of ``temporal_patch_size`` by repeating
the last frame, and cut the clip into ``temporal_patch_size x patch_size x patch_size`` patches ordered so
that each ``merge_size x merge_size`` block of neighbouring patches is contiguous (the vision tower's
patch merger relies on that order). :func:`patchify_video` does exactly that; tests/models compare it with
transformers' own ``Qwen2VLVideoProcessor.patchify`` source and with its PIL image processor.
"""

from __future__ import annotations

import numpy as np

# OpenAI CLIP statistics, Qwen2-VL's image_mean / image_std.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def patchify_video(
    frames: np.ndarray,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: tuple[float, ...] = CLIP_MEAN,
    image_std: tuple[float, ...] = CLIP_STD,
    rescale_factor: float = 1 / 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Patchify one clip in the layout of transformers' ``Qwen2VLVideoProcessor`` (5.x ``patchify``).

    Args:
        frames: (T, H, W, 3) uint8 RGB, already resized; H and W multiples of ``patch_size * merge_size``.
    Returns:
        pixel_values_videos: (grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size**2) float32;
            rows ordered (t, h-block, w-block, h-in-block, w-in-block), columns (channel, t, y, x).
        video_grid_thw: (1, 3) int64 ``[[grid_t, grid_h, grid_w]]`` with grid_t = ceil(T / temporal_patch_size).
    Raises:
        ValueError: naming the shape or dtype that is wrong.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    num_frames, height, width, channels = frames.shape
    factor = patch_size * merge_size
    if num_frames == 0 or height % factor or width % factor or height == 0 or width == 0:
        raise ValueError(
            f"frames of shape {frames.shape}: need T >= 1 and H, W positive multiples of {factor} "
            "(resize them with veripo.data.media smart-resize first)"
        )
    mean = np.asarray(image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(1, 3, 1, 1)
    # transformers fuses rescale+normalise as (x - mean/scale) / (std/scale) in float32; same here, so the
    # result matches it to float rounding.
    video = (frames.transpose(0, 3, 1, 2).astype(np.float32) - mean / rescale_factor) / (std / rescale_factor)
    if pad := -num_frames % temporal_patch_size:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)], axis=0)
    grid_t = video.shape[0] // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = video.reshape(
        grid_t, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )
    # -> (t, h-block, w-block, h-in-block, w-in-block, channel, temporal, y, x), as transformers permutes.
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = np.ascontiguousarray(
        patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    )
    return pixel_values, np.array([[grid_t, grid_h, grid_w]], dtype=np.int64)


def num_video_tokens(video_grid_thw: np.ndarray, merge_size: int = 2) -> int:
    """Placeholder tokens one video takes in the prompt: grid_t * grid_h * grid_w / merge_size**2."""
    grid_t, grid_h, grid_w = (int(x) for x in np.asarray(video_grid_thw).reshape(-1)[:3])
    return grid_t * grid_h * grid_w // merge_size**2
