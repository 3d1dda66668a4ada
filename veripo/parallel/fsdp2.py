"""Weight sharding with FSDP2 (``distributed.shard_weights``): ZeRO stage 3 for the decoder layers.

What is sharded: every decoder layer of the language model is its own ``fully_shard`` unit, so each rank keeps
1/world of its weights, gradients and AdamW moments and all-gathers one layer at a time for its forward and
backward (about 80% of Qwen2.5-VL-7B's parameters). With ``distributed.shard_group_size`` (hybrid sharding,
HSDP) the layers are sharded within groups of that many consecutive ranks (one node's GPUs) and the groups
are replicas: all-gathers stay inside a group, and each layer's gradients are reduce-scattered in the group,
then summed across the replicas. The vision tower, token embeddings, final norm and lm_head
stay whole on every rank and are data-parallel exactly as without sharding (``sum_gradients``): the vision tower
runs only for questions with images or videos, which differ per rank, and an all-gather needs every rank.

What that asks of the recipes, because every layer forward is an all-gather and every layer backward a
reduce-scatter that all ranks must enter in the same order:
- Sampling and evaluation run inside ``gathered_weights``: the layers are all-gathered once, each rank then
  decodes its own questions for as many tokens as they need, and the layers are resharded after. (Peak memory
  during sampling is the whole policy, as in data parallel; the saving is in training, where gradients,
  AdamW state and activations live.)
- Training runs in ``lockstep``: every rank makes the same number of ``backward_group`` calls with the same
  number of response micro-batches each; a rank with less work pads with zero-loss passes on a one-token
  prompt (``idle_backward``), which add exact zeros to the summed gradients.
- Gradients are summed over ranks, not averaged (the losses carry the global normalisers), as in data parallel,
  so one process, plain data parallel and sharded runs take the same optimizer step
  (tests/parallel/test_data_parallel_on_cpu.py).
- Checkpoints hold whole tensors gathered on rank 0 in the plain formats (``save_pretrained`` weights, a plain
  AdamW state dict): a run resumes with or without sharding, whatever it was written with.
- With ``distributed.shard_optimizer`` as well, the whole parameters' AdamW moments are split over the ranks
  ZeRO-1-style (``LayerShardedAdamW``): about 1.8B parameters of Qwen2.5-VL-7B, 7 GB of bf16 moments per rank
  otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

from veripo.models.grouped_forward import TrainingPasses, decoder_layers
from veripo.parallel.base import DistInfo
from veripo.parallel.data_parallel import DataParallel
from veripo.parallel.precision import Precision



def weight_sharding_requested(configured: bool, env: Mapping[str, str]) -> bool:
    """``distributed.shard_weights``, or an ``accelerate launch`` with an FSDP2 config (which veripo honours by
    sharding the decoder layers; ``configs/accelerate/fsdp2-8gpu.yaml``). Accelerate settings veripo cannot
    honour are refused rather than silently run as plain data parallel."""
    def flag(name: str) -> bool:
        return env.get(name, "false").strip().lower() == "true"

    if flag("ACCELERATE_USE_DEEPSPEED"):  # DeepSpeed shards instead (veripo.parallel.deepspeed_zero3)
        if configured:
            raise ValueError("distributed.shard_weights with an accelerate DeepSpeed launch: DeepSpeed ZeRO-3 "
                             "shards the weights itself; set distributed.shard_weights: false or launch with an "
                             "FSDP2 config")
        return False
    if not flag("ACCELERATE_USE_FSDP"):
        if flag("ACCELERATE_USE_PARALLELISM_CONFIG"):
            raise ValueError("accelerate parallelism_config without FSDP: veripo reads dp_replicate_size and "
                             "dp_shard_size only with an FSDP2 config "
                             "(configs/accelerate/fsdp2-hsdp-2nodes-16gpu.yaml)")
        return configured
    refused = {
        "FSDP_VERSION": (env.get("FSDP_VERSION", "1") != "2", "fsdp_version must be 2 (veripo shards with FSDP2)"),
        "FSDP_OFFLOAD_PARAMS": (flag("FSDP_OFFLOAD_PARAMS"), "fsdp_offload_params is not supported"),
        "FSDP_RESHARD_AFTER_FORWARD": (env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("true", "full_shard"),
                                       "fsdp_reshard_after_forward must be true (veripo reshards every layer)"),
        "FSDP_ACTIVATION_CHECKPOINTING": (flag("FSDP_ACTIVATION_CHECKPOINTING"),
                                          "use model.gradient_checkpointing: true instead of "
                                          "fsdp_activation_checkpointing (the shared-prefix cache needs it)"),
    }
    problems = [f"{why} ({name}={env.get(name)})" for name, (bad, why) in refused.items() if bad]
    if problems:
        raise ValueError("accelerate FSDP config: " + "; ".join(problems))
    return True


def shard_group_size(configured: int | None, env: Mapping[str, str], world: int) -> int:
    """How many ranks shard the layers among themselves: ``distributed.shard_group_size``, or the
    ``dp_shard_size`` of an accelerate ``parallelism_config`` (HSDP, with ``dp_replicate_size`` replicas);
    ``world`` (one flat group) when neither is set. It must divide ``world``; tensor, context and sequence
    parallelism are refused (veripo does not implement them)."""
    size = configured
    if env.get("ACCELERATE_USE_PARALLELISM_CONFIG", "false").strip().lower() == "true":
        def number(name: str) -> int:
            raw = env.get(f"PARALLELISM_CONFIG_{name}", "1")
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"accelerate parallelism_config: PARALLELISM_CONFIG_{name}={raw!r} is not a "
                                 "whole number") from None

        other = {name: number(name) for name in ("TP_SIZE", "CP_SIZE", "SP_SIZE")}
        unsupported = [f"{name.lower()}={size}" for name, size in other.items() if size > 1]
        if unsupported:
            raise ValueError("accelerate parallelism_config: veripo shards data-parallel only (dp_replicate_size, "
                             "dp_shard_size); tensor, context and sequence parallelism are not implemented: "
                             + ", ".join(unsupported))
        shard, replicate = number("DP_SHARD_SIZE"), number("DP_REPLICATE_SIZE")
        if shard * replicate != world:
            raise ValueError(f"accelerate parallelism_config: dp_shard_size {shard} x dp_replicate_size {replicate} "
                             f"= {shard * replicate}, but {world} processes were launched")
        if configured is not None and configured != shard:
            raise ValueError(f"distributed.shard_group_size is {configured} but the accelerate parallelism_config "
                             f"says dp_shard_size {shard}: set one of them")
        size = shard
    if size is None:
        return world
    if size < 1 or world % size:
        raise ValueError(f"distributed.shard_group_size {size} does not divide the {world} processes launched "
                         "(groups of consecutive ranks: use the GPUs per node)")
    return size


def shard_decoder_layers(model: nn.Module, info: DistInfo, group_size: int | None = None,
                         precision: Precision | None = None) -> int:
    """Make every decoder layer an FSDP2 unit (gradients summed); returns the number of layers. The layers are
    sharded over all ranks, or with ``group_size`` over each group of that many consecutive ranks, the groups
    holding replicas (HSDP: a 2-D mesh, replicas x group). With mixed ``precision`` the shards stay the
    master dtype and each layer is all-gathered in the compute dtype, its gradients reduce-scattered in the
    master dtype (``MixedPrecisionPolicy``)."""
    from torch.distributed.device_mesh import init_device_mesh

    device = next(model.parameters()).device
    group = shard_group_size(group_size, {}, info.world)  # the one place a group size is checked
    if group == info.world:
        mesh = init_device_mesh(device.type, (info.world,))
    else:
        mesh = init_device_mesh(device.type, (info.world // group, group), mesh_dim_names=("replicate", "shard"))
    layers = decoder_layers(model)
    policy = MixedPrecisionPolicy()  # whatever dtype the parameters have
    if precision is not None and precision.mixed:
        policy = MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=precision.master)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
        layer.set_gradient_divide_factor(1.0)  # sum, as data parallel does: losses carry global normalisers
        layer.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return len(layers)


def layers_sharded(model: nn.Module) -> bool:
    """Whether the decoder layers are FSDP2 units (``shard_decoder_layers`` ran); False for a model without
    Qwen-VL decoder layers."""
    language_model = getattr(getattr(model, "model", None), "language_model", None)
    layers = getattr(language_model, "layers", None)
    return layers is not None and len(layers) > 0 and isinstance(layers[0], FSDPModule)


def sharded_units(model: nn.Module) -> list[FSDPModule]:
    """The FSDP2 units ``shard_decoder_layers`` made (none when the weights are whole)."""
    return list(decoder_layers(model)) if layers_sharded(model) else []


@contextmanager
def gathered_layers(model: nn.Module) -> Iterator[None]:
    """The sharded layers all-gathered for the duration; every rank must enter together."""
    units = sharded_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def lockstep_counts(info: DistInfo, micro_batches: list[int]) -> list[int]:
    """Per call position the most micro-batches any rank runs, for as many calls as the busiest rank makes."""
    if info.world == 1:
        return list(micro_batches)
    every: list[list[int] | None] = [None] * info.world
    dist.all_gather_object(every, list(micro_batches))
    calls = max(len(counts) for counts in every)
    return [max(counts[i] for counts in every if i < len(counts)) for i in range(calls)]


class _CollectiveLayers(TrainingPasses):
    """Plain autograd, but every layer forward is an all-gather: one-token responses run the layers too."""

    collective_layers = True


class FullyShardedLayers(DataParallel):
    """FSDP2 on the decoder layers (HSDP with ``group_size``), the rest data parallel; with
    ``shard_optimizer`` the whole parameters' AdamW state is split over the ranks too (``LayerShardedAdamW``)."""

    shards_weights = True

    def __init__(self, info: DistInfo, group_size: int, shard_optimizer: bool = False,
                 precision: Precision | None = None) -> None:
        super().__init__(info, shard_optimizer, precision)
        self.group_size = group_size
        self._passes = _CollectiveLayers()

    def prepare(self, model: nn.Module) -> str:
        super().prepare(model)
        layers = shard_decoder_layers(model, self.info, self.group_size, self.precision)
        how = (f"sharded over {self.info.world} ranks (FSDP2)" if self.group_size == self.info.world else
               f"sharded over groups of {self.group_size} ranks, {self.info.world // self.group_size} replicas "
               "(HSDP, FSDP2)")
        return f"weights: {layers} decoder layers {how}; vision tower, embeddings and lm_head data-parallel"

    def optimizer(self, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[torch.optim.Optimizer, str | None]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.shard_optimizer:
            return (LayerShardedAdamW(params, lr=lr, weight_decay=weight_decay),
                    f"AdamW state of the whole parameters sharded over {self.info.world} ranks (ZeRO-1); the "
                    "decoder layers' state is sharded with their weights")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False), None

    def whole_parameters(self) -> list[nn.Parameter]:
        # the layers' shards (DTensors) are summed by FSDP's reduce-scatter
        return [p for p in self.model.parameters() if p.requires_grad and not isinstance(p, DTensor)]

    def lockstep(self, micro_batches: list[int]) -> list[int]:
        return lockstep_counts(self.info, micro_batches)

    def clip_gradients(self, max_grad_norm: float) -> float:
        return sharded_grad_norm_and_clip(self.model, max_grad_norm)

    @contextmanager
    def gathered_weights(self) -> Iterator[None]:
        with gathered_layers(self.model), self.compute():
            yield

    def full_state(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        return full_model_state(self.model), full_optimizer_state(self.model, optimizer)

    def load_weights(self, state: dict[str, torch.Tensor], source: object) -> None:
        try:
            load_full_model_state(self.model, state)
        except (RuntimeError, KeyError) as error:
            raise RuntimeError(f"{source}: checkpoint does not match the model ({error})") from error

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        load_full_optimizer_state(self.model, optimizer, state)


def sharded_grad_norm_and_clip(model: nn.Module, max_norm: float) -> float:
    """``clip_grad_norm_`` over sharded and whole gradients: the global L2 norm (shards' squares summed over
    the ranks of a shard group, which together hold each layer once; whole gradients counted once), every
    gradient scaled by ``min(1, max_norm / (norm + 1e-6))``."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    device = grads[0].device  # sums stay on the device: one host sync per step, not one per parameter
    shards = torch.zeros((), dtype=torch.float64, device=device)
    whole = torch.zeros((), dtype=torch.float64, device=device)
    mesh = None
    for g in grads:
        if isinstance(g, DTensor):
            shards += g.to_local().double().pow(2).sum()
            mesh = g.device_mesh
        else:
            whole += g.double().pow(2).sum()
    if mesh is not None:  # HSDP: the replicas hold the same shards, so sum over one group only
        dist.all_reduce(shards, op=dist.ReduceOp.SUM, group=mesh.get_group("shard") if mesh.ndim == 2 else None)
    total = float((shards + whole).sqrt())
    if max_norm > 0:
        coef = min(1.0, max_norm / (total + 1e-6))
        if coef < 1.0:
            for g in grads:
                (g.to_local() if isinstance(g, DTensor) else g).mul_(coef)
    return total


class LayerShardedAdamW(torch.optim.Optimizer):
    """AdamW for a weight-sharded model with ``distributed.shard_optimizer`` too: a plain AdamW steps the
    decoder layers' local shards (their moments are shards already), and a ``ZeroRedundancyOptimizer`` gives
    each rank the moments of its share of the whole parameters (vision tower, embeddings, lm_head), updating
    that share and broadcasting it. One parameter group over every trainable parameter in the model's order,
    as a plain AdamW has: schedulers set its ``lr``, and ``step`` hands the group's settings to both parts.
    Its state is saved and loaded with ``full_optimizer_state``/``load_full_optimizer_state`` (the plain AdamW
    format); ``state_dict`` alone would hold one rank's part."""

    def __init__(self, params: list[nn.Parameter], lr: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        layers = [p for p in params if isinstance(p, DTensor)]
        whole = [p for p in params if not isinstance(p, DTensor)]
        if not layers or not whole:
            raise ValueError("LayerShardedAdamW needs sharded layers and whole parameters; build a plain AdamW")
        # foreach=False: the same arithmetic order as the unsharded AdamW (equivalence tests, exact resume)
        self.layers = torch.optim.AdamW(layers, lr=lr, weight_decay=weight_decay, foreach=False)
        self.whole = ZeroRedundancyOptimizer(whole, optimizer_class=torch.optim.AdamW, lr=lr,
                                             weight_decay=weight_decay, foreach=False)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("LayerShardedAdamW.step takes no closure")
        settings = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        for part in (self.layers, self.whole):
            for group in part.param_groups:
                group.update({k: v for k, v in settings.items() if k in group})
        self.layers.step()
        self.whole.step()

    def state_dict(self) -> dict[str, Any]:
        raise RuntimeError("LayerShardedAdamW: use veripo.parallel.fsdp2.full_optimizer_state (the state lives "
                           "on every rank)")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        raise RuntimeError("LayerShardedAdamW: use veripo.parallel.fsdp2.load_full_optimizer_state")


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, on rank 0 (other ranks get an empty dict). A collective: every rank calls it."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The AdamW state whole, on rank 0, in the plain ``optimizer.state_dict()`` format (parameters numbered
    in the optimizer's order), so it loads into an unsharded run too. A collective: every rank calls it."""
    if isinstance(optimizer, LayerShardedAdamW):
        return _full_layer_sharded_state(model, optimizer)
    by_name = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_optimizer_names(model, optimizer))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]]
    return {"state": {index[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def _full_layer_sharded_state(model: nn.Module, optimizer: LayerShardedAdamW) -> dict[str, Any]:
    """Both parts of a ``LayerShardedAdamW`` gathered on rank 0 and numbered as one plain AdamW numbers them."""
    layers = get_optimizer_state_dict(model, optimizer.layers, options=_FULL)  # collectives: every rank
    optimizer.whole.consolidate_state_dict(to=0)
    if not layers:  # ranks other than 0
        return {}
    names = _optimizer_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    whole = optimizer.whole.state_dict()  # numbered in its own parameter order
    state = {index[name]: value for name, value in layers["state"].items()}
    state.update({index[name]: whole["state"][i] for i, name in enumerate(_optimizer_names(model, optimizer.whole))
                  if i in whole["state"]})
    settings = {k: v for k, v in optimizer.layers.param_groups[0].items() if k != "params"}
    settings.update({k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    return {"state": dict(sorted(state.items())), "param_groups": [{**settings, "params": list(range(len(names)))}]}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole weights (every rank has them) into the sharded model: each rank keeps its shard."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a plain AdamW state dict (every rank has it) into the optimizer of the sharded model."""
    names = _optimizer_names(model, optimizer)
    if any(not isinstance(k, int) or not 0 <= k < len(names) for k in state.get("state", {})):
        raise ValueError(f"optimizer state does not match this model's {len(names)} trainable parameters")
    if isinstance(optimizer, LayerShardedAdamW):
        _load_layer_sharded_state(model, optimizer, state, names)
        return
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]]
    by_name = {"state": {names[i]: value for i, value in state["state"].items()}, "param_groups": groups}
    # strict=False: a parameter no gradient ever reached (the vision tower in a text-only stage) has no AdamW
    # state, in a plain AdamW as here
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True, strict=False))


def _load_layer_sharded_state(model: nn.Module, optimizer: LayerShardedAdamW, state: dict[str, Any],
                              names: list[str]) -> None:
    """Split a plain AdamW state dict between the parts of a ``LayerShardedAdamW`` (every rank has it)."""
    if len(state["param_groups"]) != 1:
        raise ValueError(f"optimizer state has {len(state['param_groups'])} parameter groups; veripo's AdamW has one")
    settings = {k: v for k, v in state["param_groups"][0].items() if k != "params"}

    def settings_of(part: torch.optim.Optimizer) -> dict[str, Any]:  # the keys this part's group has
        return {k: v for k, v in settings.items() if k in part.param_groups[0]}

    position = {name: i for i, name in enumerate(names)}
    layer_names = _optimizer_names(model, optimizer.layers)
    set_optimizer_state_dict(
        model, optimizer.layers,
        {"state": {name: state["state"][position[name]] for name in layer_names if position[name] in state["state"]},
         "param_groups": [{**settings_of(optimizer.layers), "params": layer_names}]},
        options=StateDictOptions(full_state_dict=True, strict=False))
    whole = [position[name] for name in _optimizer_names(model, optimizer.whole)]
    optimizer.whole.load_state_dict(
        {"state": {j: state["state"][i] for j, i in enumerate(whole) if i in state["state"]},
         "param_groups": [{**settings_of(optimizer.whole), "params": list(range(len(whole)))}]})
    optimizer.param_groups[0].update(settings)  # lr and initial_lr, as a plain AdamW's load_state_dict sets them


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's numbering (its groups' order)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
