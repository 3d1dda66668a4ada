"""The configs shipped in configs/ load and validate, and the launcher configs agree with docs/scaling.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from veripo.config import RunConfig, load

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_run_config_validates(path: Path):
    cfg = load(RunConfig, path)
    assert cfg.stages, f"{path}: no stages"


def test_7b_config_reproduces_table1():
    cfg = load(RunConfig, CONFIGS / "qwen2.5-vl-7b" / "veripo.yaml")
    assert cfg.rollout.num_generations == 8 and cfg.rollout.temperature == 1.0
    assert cfg.grpo.rollout_batch_size == 64
    assert cfg.dpo.beta == 0.1 and cfg.dpo.lr == 5e-7 and cfg.dpo.global_batch_size == 32
    kinds = [s.kind for s in cfg.stages] + [s.kind for s in cfg.loop] * cfg.iterations
    assert kinds[:4] == ["grpo", "grpo", "verify", "dpo"] and kinds[4:] == ["grpo", "verify", "dpo"] * cfg.iterations
    assert cfg.distributed.shard_optimizer


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_consistent(path: Path):
    doc = yaml.safe_load(path.read_text())
    assert doc["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")  # data parallel, FSDP2, ZeRO-3
    assert doc["mixed_precision"] == "no"  # veripo's precision is model.dtype
    assert doc["num_processes"] % doc["num_machines"] == 0
    if doc["num_machines"] > 1:
        assert {"main_process_ip", "main_process_port"} <= set(doc)
    assert ("deepspeed_config" in doc) == (doc["distributed_type"] == "DEEPSPEED")
    assert ("fsdp_config" in doc) == (doc["distributed_type"] == "FSDP")


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_launch_environment_means_what_the_config_says(path: Path):
    """The environment ``accelerate launch --config_file PATH`` gives the processes (built by accelerate's own
    code) turns veripo's weight sharding on exactly for the FSDP configs, with one shard group per node for the
    hybrid (parallelism_config) one and one flat group otherwise, DeepSpeed ZeRO-3 exactly for the DeepSpeed
    one, and nothing in it is refused."""
    import torch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from veripo.parallel.deepspeed_zero3 import deepspeed_zero3_settings
    from veripo.parallel.fsdp2 import shard_group_size, weight_sharding_requested
    from veripo.parallel.precision import Precision, check_launcher_precision

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "veripo", "run", "CONFIG"])
    args, defaults, _ = _validate_launch_command(args)
    doc = yaml.safe_load(path.read_text())
    deepspeed = doc["distributed_type"] == "DEEPSPEED"
    if deepspeed:  # as accelerate's launch_command does before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    env = prepare_deepspeed_cmd_env(args)[1] if deepspeed else prepare_multi_gpu_env(args)
    assert deepspeed_zero3_settings(False, env) == ({"stage": 3} if deepspeed else None)
    assert weight_sharding_requested(False, env) is (doc["distributed_type"] == "FSDP")
    per_node = doc["num_processes"] // doc["num_machines"]
    hybrid = "parallelism_config" in doc
    assert shard_group_size(None, env, doc["num_processes"]) == (per_node if hybrid else doc["num_processes"])
    for precision in (Precision(), Precision(torch.bfloat16, torch.float32)):  # its mixed_precision is accepted
        check_launcher_precision(precision, env)


def test_accelerate_configs_are_documented():
    scaling = (CONFIGS.parent / "docs" / "scaling.md").read_text()
    assert ACCELERATE
    for path in ACCELERATE:
        assert f"configs/accelerate/{path.name}" in scaling, f"{path.name} not named in docs/scaling.md"
