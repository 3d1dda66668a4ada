"""``veripo export`` of a full fine-tuning run (the checkpoint's weights as they are), the base model a LoRA
checkpoint is merged into when the run has moved, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from veripo.config import RunConfig, build, dump_yaml
from veripo.models.adapters import ADAPTER_CONFIG
from veripo.recipes.export import base_model_dir, export_run
from veripo.recipes.run_dir import RunDir
from veripo.recipes.veripo import run

pytestmark = pytest.mark.slow


def test_a_full_fine_tuning_run_with_a_frozen_vision_tower_exports_its_final_weights(tiny_model_dir, tmp_path):
    cfg = build(RunConfig, {
        "output_dir": str(tmp_path / "runs"),
        "model": {"path": str(tiny_model_dir), "device": "cpu", "freeze": ["vision"]},
        "media": {"max_frames": 4, "max_pixels": 3136},
        "data": [{"path": "synthetic/train", "synthetic": {"n": 4, "seed": 1, "kinds": ["image"], "size": 56}}],
        "sft": {"batch_size": 4, "epochs": 1}, "iterations": 0, "stages": [{"name": "sft", "kind": "sft"}]})
    root = run(cfg, show_progress=False).root
    out = export_run(root)
    assert out == root / "export"
    ckpt = next((root / "stages" / "00-sft" / "checkpoints").glob("ckpt-*"))
    trained, exported = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert trained.keys() == exported.keys()
    assert all(torch.equal(trained[k], exported[k]) for k in trained)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    vision = [k for k in trained if "visual" in k]
    assert vision and all(torch.equal(trained[k], base[k]) for k in vision)  # images were seen, yet unchanged
    assert any(not torch.equal(t, base[k]) for k, t in trained.items() if k not in vision)
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert len(state["state"]) == len(trained) - len(vision)  # AdamW moments for the unfrozen tensors only
    with pytest.raises(FileExistsError, match="export: already exists"):
        export_run(root)


def test_nothing_trained_is_refused(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.config_path.write_text(dump_yaml(build(RunConfig, {})))
    with pytest.raises(ValueError, match="no finished training stage with a checkpoint to export"):
        export_run(run_dir.root)


def test_the_base_of_a_moved_lora_run_is_found(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ADAPTER_CONFIG).write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    run_dir = RunDir(tmp_path / "run")
    assert base_model_dir(run_dir, build(RunConfig, {"model": {"path": str(tiny_model_dir)}}), ckpt) == tiny_model_dir
    (ckpt / ADAPTER_CONFIG).write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    assert base_model_dir(run_dir, build(RunConfig, {"model": {"path": str(ckpt)}}), ckpt) == tiny_model_dir
    (ckpt / ADAPTER_CONFIG).write_text(json.dumps({}))
    with pytest.raises(ValueError, match="is a model directory to merge the adapters into"):
        base_model_dir(run_dir, build(RunConfig, {}), ckpt)
