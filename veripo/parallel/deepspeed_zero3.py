"""DeepSpeed ZeRO stage 3 (``distributed.deepspeed_zero3``, or an ``accelerate launch`` with a DeepSpeed config
of ``zero_stage: 3``): every parameter, gradient and AdamW moment is partitioned over the ranks by DeepSpeed's
engine; a module's weights are all-gathered when it runs.

How veripo's trainers use the engine (the ``DeepSpeedZero3`` strategy, whose ``passes`` replace
``backward_group``'s plain ones):
- Every forward segment of ``backward_group`` (the shared prompt pass, each response micro-batch) runs as one
  engine forward of a wrapper module whose ``forward`` calls the segment, and every loss goes through
  ``engine.backward``. The prompt pass's own backward comes after its micro-batches' without a forward in
  between, so an empty engine forward precedes it: ZeRO-3 counts micro-steps at forwards and *adds* a
  backward's gradient partitions to the earlier ones only from the second micro-step of an optimizer step on
  (at the first it copies them). The gradient partitions are zeroed at the start of every optimizer step
  (``DeepSpeedAdamW.zero_grad``), for the parameters whose gradients never arrive at a step's first backward.
- Losses are multiplied by the number of ranks: DeepSpeed averages gradients over the ranks, veripo's losses
  carry the global normalisers and are summed (as in data parallel and FSDP2). The prompt pass's backward is
  not multiplied again: the gradients it sends back come from those scaled losses.
- Every forward is a collective, so training runs in ``lockstep`` as with FSDP2, and every prompt pass runs
  the vision tower (on a blank image when the prompt has none, adding exact zeros), where a real prompt runs
  it: DeepSpeed checks that all ranks run their modules in the same order.
- Sampling, evaluation and reference log-probs run inside ``gathered_weights``: all weights gathered and the
  engine's module hooks removed, so each rank decodes its own questions for as long as it needs. That and
  creating AdamW's state before a resume use DeepSpeed internals, tested with DeepSpeed 0.19.8.
- Each stage builds its own engine (its AdamW, learning rate, clipping); ``gradient_clipping`` is the stage's
  ``max_grad_norm`` and DeepSpeed reports the norm.
- Checkpoints hold whole tensors in the plain formats (``save_pretrained`` weights, a plain AdamW state dict),
  gathered on rank 0, so they load without DeepSpeed too (and a DeepSpeed stage can load another engine's).

One difference from one process: a parameter no gradient reached in a step (the vision tower in a text-only
stage) still takes an AdamW step with a zero gradient, because ZeRO-3 keeps one flat partition per rank;
AdamW then applies weight decay to it and counts the step. A plain AdamW skips it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veripo.models.grouped_forward import TrainingPasses
from veripo.parallel.base import DistInfo
from veripo.parallel.data_parallel import DataParallel
from veripo.parallel.precision import Precision


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() == "true"


def deepspeed_zero3_settings(configured: bool, env: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``zero_optimization`` section to run with, or None without DeepSpeed: ``distributed.deepspeed_zero3``,
    or an accelerate DeepSpeed launch (its ``deepspeed_config_file``'s section, or stage 3 from
    ``zero_stage``). What veripo cannot honour is refused with the reason, never run as something else."""
    if not _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return {"stage": 3} if configured else None
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if config_file and config_file.lower() != "none":
        return _settings_from_file(Path(config_file))
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    problems = []
    if stage != "3":
        problems.append(f"zero_stage must be 3 (got {stage or 'unset'}); for ZeRO-1 use "
                        "distributed.shard_optimizer=true")
    for name in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if env.get(name, "none").strip().lower() not in ("none", ""):
            problems.append(f"{name.removeprefix('ACCELERATE_DEEPSPEED_').lower()} must be none (offloading is "
                            "not supported by veripo)")
    accumulation = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    if accumulation not in ("1", ""):
        problems.append(f"gradient_accumulation_steps must be 1 (got {accumulation}): veripo's batch sizes and "
                        "micro-batches are set in the run config")
    if problems:
        raise ValueError("accelerate DeepSpeed config: " + "; ".join(problems))
    return {"stage": 3}


def _settings_from_file(path: Path) -> dict[str, Any]:
    """``zero_optimization`` of a DeepSpeed JSON config; the sections veripo sets itself are refused there."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"accelerate deepspeed_config_file {path}: cannot read it as JSON ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'zero_optimization' section")
    zero = dict(config["zero_optimization"])
    problems = []
    if zero.get("stage") != 3:
        problems.append(f"zero_optimization.stage must be 3 (got {zero.get('stage')!r})")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none") if isinstance(zero.get(key), dict) else zero.get(key)
        if device not in (None, "none"):
            problems.append(f"zero_optimization.{key} must be off (offloading is not supported by veripo)")
    for key in ("optimizer", "scheduler", "fp16"):
        if key in config and not (key == "fp16" and not (config[key] or {}).get("enabled", False)):
            problems.append(f"'{key}' must not be set: veripo builds AdamW and the schedule from the run config, "
                            "and trains in model.dtype (bfloat16 or float32)")
    accumulation = config.get("gradient_accumulation_steps", 1)
    if accumulation not in (1, "auto"):
        problems.append(f"gradient_accumulation_steps must be 1 or auto (got {accumulation!r})")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return zero


class _Segment(nn.Module):
    """The engine's module: the policy as a submodule (so ZeRO-3 partitions and hooks all of it) and a
    ``forward`` that runs whatever segment of computation it is handed."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, compute: Callable[[], Any]) -> Any:
        return compute()


class _EnginePasses(TrainingPasses):
    """``backward_group``'s passes through the stage's engine: every forward and backward is a collective."""

    collective_layers = True
    collective_vision = True

    def __init__(self, zero3: DeepSpeedZero3) -> None:
        self.zero3 = zero3

    @property
    def engine(self) -> Any:
        return self.zero3.engine

    @property
    def info(self) -> DistInfo:
        return self.zero3.info

    def forward(self, compute: Callable[[], Any]) -> Any:
        if self.engine is None:
            raise RuntimeError("DeepSpeed ZeRO-3: no engine yet; build the stage's optimizer first")
        return self.engine(compute)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.info.world, scale_wrt_gas=False)

    def backward_through(self, tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        self.engine(lambda: None)  # a new micro-step, so these gradients are added to the micro-batches'
        # d/dt = g: the same backward; not multiplied by the ranks again (``grads`` come from scaled losses)
        surrogate = sum((t * g).sum() for t, g in zip(tensors, grads))
        self.engine.backward(surrogate, scale_wrt_gas=False)

class DeepSpeedZero3(DataParallel):
    """A policy trained under DeepSpeed ZeRO-3: ``backward_group``'s passes through the engine, one engine per
    stage (its AdamW, learning rate and clipping), whole tensors gathered for sampling and checkpoints."""

    shards_weights = True

    def __init__(self, info: DistInfo, zero_settings: Mapping[str, Any], precision: Precision | None = None) -> None:
        super().__init__(info, precision=precision)
        if self.precision.compute == torch.float16:
            raise ValueError("DeepSpeed ZeRO-3: model.dtype float16 is not supported; use bfloat16 or float32")
        self.zero_settings = dict(zero_settings)
        self.engine: Any = None
        self._passes = _EnginePasses(self)

    # -- precision: the parameters are in the compute dtype; the engine keeps the masters ---------------------
    @property
    def load_dtype(self) -> torch.dtype:
        return self.precision.compute

    @contextmanager
    def compute(self) -> Iterator[None]:
        yield  # the parameters are in the compute dtype already

    @property
    def passes(self) -> TrainingPasses:
        return self._passes

    def precision_config(self) -> dict[str, Any]:
        """DeepSpeed's ``bf16`` section: bf16 compute keeps float32 master partitions and AdamW state (DeepSpeed's
        default); pure bf16 (``model.master_dtype: bfloat16``) keeps both in bf16 as well."""
        if self.precision.compute != torch.bfloat16:
            return {"enabled": False}
        if self.precision.mixed:
            return {"enabled": True}
        return {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}

    def prepare(self, model: nn.Module) -> str:
        super().prepare(model)
        self.wrapper = _Segment(model)
        return (f"weights: DeepSpeed ZeRO-3 over {self.info.world} ranks (partitioned when the first training stage "
                "builds its engine)")

    def whole_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad and not hasattr(p, "ds_id")]

    def lockstep(self, micro_batches: list[int]) -> list[int]:
        from veripo.parallel.fsdp2 import lockstep_counts

        return lockstep_counts(self.info, micro_batches)

    def optimizer(self, lr: float, weight_decay: float, max_grad_norm: float) -> tuple[torch.optim.Optimizer, str | None]:
        return (self.new_optimizer(lr, weight_decay, max_grad_norm),
                f"DeepSpeed ZeRO-3 engine: weights, gradients and AdamW state partitioned over {self.info.world} "
                "ranks")

    def step(self, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float) -> tuple[float, float]:
        # the engine reduced the gradients, and clips as it steps
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        return optimizer.grad_norm, lr

    @contextmanager
    def gathered_weights(self) -> Iterator[None]:
        with self.gathered():
            yield

    def full_state(self, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        return self.full_model_state(), optimizer.full_state() if optimizer is not None else None

    def load_weights(self, state: dict[str, torch.Tensor], source: object) -> None:
        try:
            self.load_full_model_state(state)
        except KeyError as error:
            raise RuntimeError(f"{source}: checkpoint does not match the model ({error})") from error

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_full_state(state)

    # -- one engine per stage -----------------------------------------------------------------------------
    def new_optimizer(self, lr: float, weight_decay: float, max_grad_norm: float) -> "DeepSpeedAdamW":
        import deepspeed
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        params = [p for p in self.model.parameters() if p.requires_grad]
        masters: list[torch.Tensor] = []
        if self.engine is not None:
            # the previous stage's master partitions (float32 under bf16 compute): a new engine would build its
            # masters from the bf16 weights, rounding away what the last stage's updates added below bf16's ulp
            masters = [safe_get_local_fp32_param(p).detach().clone() for p in params]
            self.engine.destroy()
        # foreach=False: the same arithmetic order as the other engines (equivalence tests, exact resume)
        client = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False)
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,  # veripo decides when a step ends (engine.step per optimizer step)
            "gradient_clipping": max(0.0, float(max_grad_norm)),
            "zero_optimization": self.zero_settings,
            "bf16": self.precision_config(),
            "steps_per_print": 1 << 62,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=self.wrapper, optimizer=client, config=config)
        for p, master in zip(params, masters):
            safe_set_local_fp32_param(p, master)
        return DeepSpeedAdamW(self, client, params, lr, weight_decay)

    # -- whole weights --------------------------------------------------------------------------------------
    @contextmanager
    def gathered(self) -> Iterator[None]:
        """All weights gathered on every rank and the engine's hooks off: any number of plain forwards."""
        if self.engine is None:  # no engine yet: the weights were never partitioned
            yield
            return
        import deepspeed

        offload = self.engine.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            offload._remove_module_hooks()
            try:
                yield
            finally:
                offload.setup_zero_stage3_hooks()

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """Every weight whole on rank 0 (on CPU; other ranks get an empty dict). A collective. Trained weights
        come from the engine's master partitions (float32 under bf16 compute), so a checkpoint resumes the
        masters exactly rather than their bf16 rounding."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        state: dict[str, torch.Tensor] = {}
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            if not hasattr(tensor, "ds_id"):
                if self.info.is_main:
                    state[name] = tensor.detach().cpu().clone()
                continue
            if self.engine is not None and tensor.requires_grad:
                master = safe_get_full_fp32_param(tensor)  # a collective: every rank
                if self.info.is_main:
                    state[name] = master.detach().cpu().reshape(tensor.ds_shape).clone()
                continue
            with deepspeed.zero.GatheredParameters([tensor]):
                if self.info.is_main:
                    state[name] = tensor.detach().cpu().clone()
        return state

    def load_full_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load whole weights (every rank has them): the partitions and the engine's fp32 copies."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        own = self.model.state_dict(keep_vars=True)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in own.items():
            value = state[name]
            if not hasattr(tensor, "ds_id"):
                tensor.data.copy_(value)
                continue
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=0):
                if self.info.is_main:
                    tensor.data.copy_(value.view_as(tensor.data))
            if self.engine is not None and tensor.requires_grad:
                safe_set_full_fp32_param(tensor, value.to(torch.float32).reshape(-1))


class DeepSpeedAdamW(torch.optim.Optimizer):
    """The stage's optimizer as the recipes see it: one parameter group (schedulers set its ``lr``); ``step``
    hands the group's settings to the engine's AdamW, clips and steps (``grad_norm``: the norm before
    clipping). Its state is saved and loaded whole in the plain AdamW format (``full_state``,
    ``load_full_state``)."""

    def __init__(self, zero3: DeepSpeedZero3, client: torch.optim.Optimizer, params: list[nn.Parameter],
                 lr: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.zero3, self.client = zero3, client
        self.grad_norm = 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Start a step with zero gradient partitions. ZeRO-3 overwrites a partition only when its parameter
        gets a gradient in the step's first backward and adds to it after; the vision tower's come only from
        the prompt pass's backward, which is never the first, so without this they would keep adding the
        previous steps' gradients."""
        from deepspeed.utils import safe_set_local_grad

        self.zero3.engine.zero_grad()
        for p in self.param_groups[0]["params"]:
            safe_set_local_grad(p, torch.zeros(p.ds_tensor.numel(), dtype=torch.float32, device=p.ds_tensor.device))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        settings = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        for group in self.client.param_groups:
            group.update({k: v for k, v in settings.items() if k in group})
        engine = self.zero3.engine
        engine.step()
        norm = engine.get_global_grad_norm()
        self.grad_norm = float(norm) if norm is not None else 0.0

    def _step_count(self) -> torch.Tensor | None:
        states = [s for s in self.client.state.values() if "step" in s]
        return states[0]["step"] if states else None

    def full_state(self) -> dict[str, Any]:
        """The AdamW state whole on rank 0 in the plain ``AdamW.state_dict()`` format (other ranks: {}).
        A collective."""
        from deepspeed.utils import safe_get_full_optimizer_state

        params = self.param_groups[0]["params"]
        step = self._step_count()
        state: dict[int, dict[str, torch.Tensor]] = {}
        if step is not None:
            for i, p in enumerate(params):
                moments = {key: safe_get_full_optimizer_state(p, key) for key in ("exp_avg", "exp_avg_sq")}
                if self.zero3.info.is_main:
                    state[i] = {"step": step.detach().cpu().clone().float(),
                                **{k: v.detach().cpu().reshape(p.ds_shape).clone() for k, v in moments.items()}}
        if not self.zero3.info.is_main:
            return {}
        settings = {k: v for k, v in self.client.param_groups[0].items() if k != "params"}
        settings.update({k: v for k, v in self.param_groups[0].items() if k != "params"})
        return {"state": state, "param_groups": [{**settings, "params": list(range(len(params)))}]}

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        """Load a plain AdamW state dict (every rank has it). ZeRO-3 steps every parameter together, so the
        step count is the largest in the file (equal for all when the file came from a DeepSpeed run)."""
        from deepspeed.utils import safe_set_full_optimizer_state

        params = self.param_groups[0]["params"]
        entries = state.get("state", {})
        if any(not isinstance(k, int) or not 0 <= k < len(params) for k in entries):
            raise ValueError(f"optimizer state does not match this model's {len(params)} trainable parameters")
        if len(state["param_groups"]) != 1:
            raise ValueError(f"optimizer state has {len(state['param_groups'])} parameter groups; veripo's AdamW "
                             "has one")
        if entries:
            if self._step_count() is None:  # AdamW creates its state at the first step: create it as AdamW would,
                # for the flat fp32 partitions the engine steps (one per sub-group)
                for flat in self.zero3.engine.optimizer.fp32_partitioned_groups_flat:
                    self.client.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                               "exp_avg_sq": torch.zeros_like(flat)}
            for i, p in enumerate(params):
                entry = entries.get(i)
                for key in ("exp_avg", "exp_avg_sq"):
                    value = entry[key] if entry is not None else torch.zeros(p.ds_shape)
                    safe_set_full_optimizer_state(p, value.to(torch.float32).reshape(-1), key)
            step = max(float(e["step"]) for e in entries.values())
            for s in self.client.state.values():
                s["step"].fill_(step)
        settings = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
        self.param_groups[0].update({k: v for k, v in settings.items() if k in ("lr", "weight_decay", "initial_lr")})
