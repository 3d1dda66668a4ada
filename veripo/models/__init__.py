"""Models: load a policy from a directory, build the tiny Qwen2.5-VL offline, the processor (numpy video
patchifier, no torchvision), prompt building and reference sampling."""

from veripo.models.generation import SampledResponse, sample_responses, vision_token_ids
from veripo.models.loading import Policy, load_policy
from veripo.models.processor import VeripoProcessor, VideoSettings
from veripo.models.prompts import PROMPT_STYLES, build_messages, encode_prompt
from veripo.models.tiny import SIZES, build_tiny, count_parameters
from veripo.models.video_processor import patchify_video

__all__ = [
    "PROMPT_STYLES", "SIZES", "Policy", "SampledResponse", "VeripoProcessor", "VideoSettings", "build_messages",
    "build_tiny", "count_parameters", "encode_prompt", "load_policy", "patchify_video", "sample_responses",
    "vision_token_ids",
]
