"""Fixtures for the model tests: the session's tiny model loaded as a policy, frames, and tiny models of every
family (``family`` fixture: Qwen2.5-VL, Qwen3-VL, Qwen3.5) built from a config with hand-made vision prompts (the
grouped-forward equivalence tests run once per family)."""

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
# Every family the grouped-forward equivalence tests run on (``veripo.models.families``).
FAMILIES_UNDER_TEST = ("qwen2.5-vl", "qwen3-vl", "qwen3.5")
TEST_SPEC_WIDTHS = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_depth=2,
                        vision_heads=2, vision_intermediate=64)


class SpecialIds:
    """The two things a family's ``tiny_config`` asks a tokenizer: its size and the special tokens' ids."""

    IDS = {"<|endoftext|>": 0, "<|im_end|>": 2, "<|image_pad|>": IMAGE_PAD, "<|video_pad|>": VIDEO_PAD,
           "<|vision_start|>": VISION_START, "<|vision_end|>": VISION_END, "<|vision_pad|>": 254}

    def __len__(self) -> int:
        return 256

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.IDS.get(token, 3)


def tiny_family_model(family: str = "qwen2.5-vl", seed: int = 0):
    """A 2-layer model of ``family`` with 14 px patches (Qwen3.5: one linear-attention and one full-attention
    layer), fp32, train mode, built from the family's own ``tiny_config``."""
    from veripo.models.families import family_named
    from veripo.models.tiny import TinySpec

    kind = family_named(family)
    config = kind.tiny_config(TinySpec(**TEST_SPEC_WIDTHS), SpecialIds(), patch_size=14)
    torch.manual_seed(seed)
    return kind.model_class(config.model_type)(config).float().train()


def tiny_qwen25_vl(seed: int = 0):
    return tiny_family_model("qwen2.5-vl", seed)


def _vision_prompt(grid: list[int], pad: int, token_type: int, pixels_key: str, grid_key: str, seed: int,
                   per_frame: bool = False):
    """<text> <|vision_start|> N x pad <|vision_end|> <text>, with random patchified pixels for ``grid``;
    ``per_frame``: one timestamp token and one start/pads/end block per temporal patch (Qwen3-VL's layout)."""
    generator = torch.Generator().manual_seed(seed)
    grid_thw = torch.tensor([grid])
    num_patches = int(grid_thw.prod())
    frames, per_block = (grid[0], num_patches // grid[0] // 4) if per_frame else (1, num_patches // 4)  # 2x2 merge
    vision = [token for t in range(frames) for token in ([30 + t] if per_frame else []) + [VISION_START]
              + [pad] * per_block + [VISION_END]]
    ids = [1, 7, 9] + vision + [11, 13, 17, 19]
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        pixels_key: torch.randn(num_patches, 3 * 2 * 14 * 14, generator=generator),
        grid_key: grid_thw,
        "mm_token_type_ids": (input_ids == pad).long() * token_type,
    }


def video_prompt(frames: int = 4, patches: int = 4, seed: int = 0, family: str = "qwen2.5-vl") -> dict[str, torch.Tensor]:
    from veripo.models.families import family_named

    return _vision_prompt([frames // 2, patches, patches], VIDEO_PAD, 2, "pixel_values_videos", "video_grid_thw", seed,
                          per_frame=family_named(family).video_placeholder_replaces_wrapper)


def image_prompt(patches: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    return _vision_prompt([1, patches, patches], IMAGE_PAD, 1, "pixel_values", "image_grid_thw", seed)


@pytest.fixture(params=FAMILIES_UNDER_TEST)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return tiny_family_model(family)


@pytest.fixture
def prompt(family):
    return video_prompt(family=family)


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


@pytest.fixture(scope="session")
def family_policy(tiny_model_dir, tmp_path_factory):
    """``family_policy(name)``: the tiny model of family ``name`` built by ``build_tiny`` (seed 0) and loaded with
    ``load_policy``, once per session (the Qwen2.5-VL one is the shared ``tiny_model_dir``)."""
    from veripo.models import build_tiny, load_policy

    loaded = {}

    def get(name: str):
        if name not in loaded:
            path = tiny_model_dir if name == "qwen2.5-vl" else build_tiny(
                tmp_path_factory.mktemp(f"tiny-{name}") / "model", "tiny", seed=0, family=name)
            loaded[name] = load_policy(path)
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def frames_for():
    """``frames_for(policy)``: six random RGB frames of 2 x 3 resize factors (56 x 84 at patch 14, 64 x 96 at
    patch 16)."""

    def make(policy, seed: int = 0) -> np.ndarray:
        factor = policy.processor.resize_factor
        return np.random.default_rng(seed).integers(0, 256, (6, 2 * factor, 3 * factor, 3), dtype=np.uint8)

    return make
