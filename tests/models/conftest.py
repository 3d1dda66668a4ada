"""Fixtures for the model tests: the session's tiny model loaded as a policy, frames, and a tiny Qwen2.5-VL built
from a config with hand-made vision prompts (the grouped-forward equivalence tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def policy(tiny_model_dir):
    from veripo.models.loading import load_policy

    return load_policy(tiny_model_dir)


@pytest.fixture()
def frames() -> np.ndarray:
    """Six random (56, 84) RGB uint8 frames: grid (3, 4, 6), 18 video tokens."""
    return np.random.default_rng(0).integers(0, 256, (6, 56, 84, 3), dtype=np.uint8)


VIDEO_PAD, VISION_START, VISION_END, IMAGE_PAD = 251, 252, 253, 250


def tiny_qwen25_vl(seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "in_channels": 3,
        },
        image_token_id=IMAGE_PAD,
        video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).float().train()


def _vision_prompt(grid: list[int], pad: int, token_type: int, pixels_key: str, grid_key: str, seed: int):
    """<text> <|vision_start|> N x pad <|vision_end|> <text>, with random patchified pixels for ``grid``."""
    generator = torch.Generator().manual_seed(seed)
    grid_thw = torch.tensor([grid])
    num_patches = int(grid_thw.prod())
    ids = [1, 7, 9, VISION_START] + [pad] * (num_patches // 4) + [VISION_END, 11, 13, 17, 19]  # 2x2 merge
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        pixels_key: torch.randn(num_patches, 3 * 2 * 14 * 14, generator=generator),
        grid_key: grid_thw,
        "mm_token_type_ids": (input_ids == pad).long() * token_type,
    }


def video_prompt(frames: int = 4, patches: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return _vision_prompt([frames // 2, patches, patches], VIDEO_PAD, 2, "pixel_values_videos", "video_grid_thw", seed)


def image_prompt(patches: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return _vision_prompt([1, patches, patches], IMAGE_PAD, 1, "pixel_values", "image_grid_thw", seed)


@pytest.fixture
def tiny_model():
    return tiny_qwen25_vl()


@pytest.fixture
def prompt():
    return video_prompt()


@pytest.fixture
def responses():
    """G=4 right-padded responses of up to R=7 tokens."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(20, 240, (4, 7), generator=generator)
    lengths = torch.tensor([7, 4, 6, 2])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    return ids, mask


@pytest.fixture
def image_prompt_inputs():
    return image_prompt()


@pytest.fixture
def text_prompt_inputs():
    return {"input_ids": torch.tensor([[1, 7, 9, 11]])}
