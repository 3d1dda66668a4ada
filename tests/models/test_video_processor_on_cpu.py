"""The numpy patchifier equals transformers' Qwen2-VL video processor (its own code) and image processor."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from veripo.models.video_processor import (
    CLIP_MEAN,
    CLIP_STD,
    num_video_tokens,
    patchify_video,
)


def transformers_video_patchify(module: str = "qwen2_vl", cls_name: str = "Qwen2VLVideoProcessor"):
    """``<cls_name>.patchify`` (Qwen2-VL's or Qwen3-VL's) compiled from transformers' own source file.

    The module imports torchvision at the top (not installable beside our torch), but ``patchify`` itself
    only uses torch: we take that function's source verbatim from the installed file and compile it alone.
    """
    import importlib

    package = importlib.import_module(f"transformers.models.{module}")
    path = Path(inspect.getfile(package)).parent / f"video_processing_{module}.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["patchify"]


def transformers_reference(frames: np.ndarray, patch_size=14, temporal_patch_size=2, merge_size=2, mean=CLIP_MEAN,
                           std=CLIP_STD, patchify=None):
    """transformers' video path on already-resized frames: the base processor's fused rescale+normalise
    (``tvF.normalize`` replaced by its definition, (x - mean) / std per channel), then ``patchify``."""
    from transformers.video_processing_utils import BaseVideoProcessor

    processor = BaseVideoProcessor()
    processor.normalize = lambda image, mean, std, inplace=False: (image - mean[:, None, None]) / std[:, None, None]
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # (B=1, T, C, H, W) as transformers batches
    video = processor.rescale_and_normalize(video, True, 1 / 255, True, mean, std)
    patches, t, h, w = (patchify or transformers_video_patchify())(None, video, patch_size, merge_size,
                                                                   temporal_patch_size)
    return patches[0].numpy(), np.array([[t, h, w]])


@pytest.mark.parametrize("shape", [(6, 56, 84), (5, 56, 56), (1, 28 * 4, 28 * 2), (8, 112, 112)])
def test_equals_transformers_video_processor(shape):
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, grid = patchify_video(frames)
    ref, ref_grid = transformers_reference(frames)
    assert grid.dtype == np.int64 and grid.tolist() == ref_grid.tolist()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 64, 96), (5, 32, 32), (2, 128, 64)])
def test_equals_transformers_qwen3_vl_video_processor(shape):
    """Qwen3-VL / Qwen3.5: patch 16, mean/std 0.5 (IMAGENET_STANDARD), ``Qwen3VLVideoProcessor.patchify``."""
    from veripo.models.families import family_named

    qwen3 = family_named("qwen3-vl")
    frames = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours, grid = patchify_video(frames, patch_size=qwen3.patch_size, image_mean=qwen3.image_mean,
                                image_std=qwen3.image_std)
    # Qwen3VLVideoProcessor's image_mean / image_std (its module imports torchvision, so the constants it names)
    from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

    ref, ref_grid = transformers_reference(frames, patch_size=16, mean=tuple(IMAGENET_STANDARD_MEAN),
                                           std=tuple(IMAGENET_STANDARD_STD),
                                           patchify=transformers_video_patchify("qwen3_vl", "Qwen3VLVideoProcessor"))
    assert grid.tolist() == ref_grid.tolist() and ours.shape == ref.shape == (int(grid.prod()), 3 * 2 * 16 * 16)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_layout_changes_are_detected():
    # negative control: a wrong permutation (no merge-block grouping) must fail the comparison
    frames = np.random.default_rng(1).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    ref, _ = transformers_reference(frames)
    wrong, _ = patchify_video(frames, merge_size=1)
    assert np.abs(wrong - ref).max() > 0.1


def test_static_video_equals_transformers_image_processor():
    # an image is a clip of temporal_patch_size identical frames: transformers' PIL image processor gives
    # the same patches (its own rescale/normalise, no resize since 56x84 is on the grid)
    from transformers import Qwen2VLImageProcessorPil

    image = np.random.default_rng(2).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    out = Qwen2VLImageProcessorPil()(images=[image], do_resize=False, return_tensors="np")
    ours, grid = patchify_video(np.stack([image, image]))
    assert grid.tolist() == out["image_grid_thw"].tolist()
    np.testing.assert_allclose(ours, out["pixel_values"], rtol=0, atol=1e-6)


def test_odd_frame_count_repeats_last_frame():
    frames = np.random.default_rng(3).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    padded = np.concatenate([frames, frames[-1:]])
    np.testing.assert_array_equal(patchify_video(frames)[0], patchify_video(padded)[0])


def test_token_count():
    assert num_video_tokens(np.array([[4, 8, 8]])) == 64


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 50, 56, 3), np.uint8), "multiples of 28"),
    (np.zeros((2, 56, 56), np.uint8), r"\(T, H, W, 3\)"),
    (np.zeros((2, 56, 56, 3), np.float32), "uint8"),
    (np.zeros((0, 56, 56, 3), np.uint8), "T >= 1"),
])
def test_bad_frames_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        patchify_video(bad)
