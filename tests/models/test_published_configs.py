"""The published dimensions veripo ships: built on the meta device they give exactly the parameter count
published for each checkpoint, and model paths are recognised by their last component."""

from __future__ import annotations

import pytest

from veripo.models.footprint import ModelDims, read_model_config
from veripo.models.published_configs import PUBLISHED_CONFIGS, PUBLISHED_PARAMETERS, published_config, recognise

CHECKED = [name for name, count in PUBLISHED_PARAMETERS.items() if count is not None]


def test_qwen25_vl_7b_parameter_count_is_exact():
    dims = ModelDims.of(published_config("Qwen2.5-VL-7B-Instruct"))
    assert dims.parameters == 8_292_166_656  # the Hub's safetensors total for Qwen/Qwen2.5-VL-7B-Instruct
    assert dims.vision_parameters == 676_550_144
    assert (dims.hidden, dims.layers, dims.kv_width, dims.q_width, dims.vocab) == (3584, 28, 512, 3584, 152064)
    # 28 decoder layers of q/k/v (with bias), o, gate/up/down and two norms
    per_layer = 3584 * (3584 + 512 + 512) + (3584 + 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert dims.layer_parameters == 28 * per_layer


@pytest.mark.parametrize("name", [n for n in CHECKED if n != "Qwen2.5-VL-7B-Instruct"])
def test_parameter_counts_equal_the_published_ones(name: str):
    assert ModelDims.of(published_config(name)).parameters == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("path, name", [
    ("/models/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B-Instruct"),
    ("/models/Qwen2.5-VL-7B-Instruct/", "Qwen2.5-VL-7B-Instruct"),
    ("Qwen/qwen2.5-vl-3b-instruct", "Qwen2.5-VL-3B-Instruct"),
    ("/ckpt/Qwen2.5-VL-72B", "Qwen2.5-VL-72B-Instruct"),
    ("Qwen3-VL-8B-Thinking", "Qwen3-VL-8B-Instruct"),
    ("/models/my-finetune", None),
    ("/models/Qwen2.5-VL-7B-Instruct-sft", None),
])
def test_recognise_by_last_component(path: str, name: str | None):
    assert recognise(path) == name


def test_published_config_is_a_copy_and_unknown_names_fail():
    cfg = published_config("Qwen2.5-VL-3B-Instruct")
    cfg["vision_config"]["depth"] = 1
    assert PUBLISHED_CONFIGS["Qwen2.5-VL-3B-Instruct"]["vision_config"]["depth"] == 32
    with pytest.raises(KeyError, match="no published dimensions for 'Qwen9'"):
        published_config("Qwen9")


def test_read_model_config_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json: cannot read the model config"):
        read_model_config(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 3}')
    with pytest.raises(ValueError, match="not a transformers config.json"):
        read_model_config(tmp_path)
