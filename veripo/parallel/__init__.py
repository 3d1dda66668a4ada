"""Running on one process or many, behind one seam: ``ParallelStrategy`` (``base.py``).

``make_strategy`` picks the strategy of a launch from the run config's ``distributed`` section and the
launcher's environment (torchrun, or ``accelerate launch`` with an FSDP2 or DeepSpeed config); a new backend is
one new file here with a ``ParallelStrategy`` subclass and one branch in ``make_strategy``.
"""

from __future__ import annotations

from collections.abc import Mapping

from veripo.config.schema import DistributedConfig
from veripo.errors import LaunchError
from veripo.parallel.base import (
    DistInfo,
    ParallelStrategy,
    barrier,
    broadcast_object,
    collective_timeout,
    finish_process,
    gather_objects,
    init_distributed,
)
from veripo.parallel.data_parallel import DataParallel
from veripo.parallel.deepspeed_zero3 import DeepSpeedZero3, deepspeed_zero3_settings
from veripo.parallel.fsdp2 import FullyShardedLayers, shard_group_size, weight_sharding_requested
from veripo.parallel.precision import Precision, check_launcher_precision

__all__ = [
    "DataParallel", "DeepSpeedZero3", "DistInfo", "FullyShardedLayers", "ParallelStrategy", "Precision", "barrier",
    "broadcast_object", "collective_timeout", "finish_process", "gather_objects", "init_distributed", "make_strategy",
]


def make_strategy(distributed: DistributedConfig, env: Mapping[str, str], info: DistInfo,
                  precision: Precision | None = None) -> ParallelStrategy:
    """The strategy for this launch with the run's ``precision`` (compute and master dtypes; default float32
    both); a setting that cannot work is refused here, before any model loads (``LaunchError``: exit code 2)."""
    try:
        return _strategy_for(distributed, env, info, precision)
    except ValueError as e:
        raise LaunchError(str(e)) from e


def _strategy_for(distributed: DistributedConfig, env: Mapping[str, str], info: DistInfo,
                  precision: Precision | None) -> ParallelStrategy:
    check_launcher_precision(precision or Precision(), env)
    if info.world <= 1:
        return ParallelStrategy(info, precision)
    zero3 = deepspeed_zero3_settings(distributed.deepspeed_zero3, env)
    if zero3 is not None:
        if distributed.shard_weights or distributed.shard_optimizer:
            raise ValueError("DeepSpeed ZeRO-3 with distributed.shard_weights or shard_optimizer: ZeRO-3 partitions "
                             "the weights and the optimizer state itself; set those to false")
        try:
            import deepspeed  # noqa: F401  (checked before the model loads)
        except ImportError:
            raise ValueError("DeepSpeed ZeRO-3 was requested but deepspeed is not installed: pip install deepspeed "
                             "(CPU-only machines: DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed)") from None
        return DeepSpeedZero3(info, zero3, precision)
    if weight_sharding_requested(distributed.shard_weights, env):
        group = shard_group_size(distributed.shard_group_size, env, info.world)
        return FullyShardedLayers(info, group, distributed.shard_optimizer, precision)
    if distributed.shard_group_size is not None:
        raise ValueError("distributed.shard_group_size is set but the weights are not sharded: set "
                         "distributed.shard_weights: true (or launch with an accelerate FSDP2 config)")
    return DataParallel(info, distributed.shard_optimizer, precision)
