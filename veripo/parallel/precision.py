"""Mixed precision: 16-bit compute with float32 master weights and float32 AdamW state, on every strategy.

Two dtypes, two config keys (``veripo.config.schema.ModelConfig``):

- ``model.dtype``, the *compute* dtype: what rollouts, the training forward/backward and evaluation run in;
- ``model.master_dtype``, the *master* dtype: the weights the optimizer updates, the AdamW moments, and the
  weights checkpoints hold. Equal to a 16-bit compute dtype it selects pure 16-bit training (the negative
  control of ``tests/parallel/test_master_weights_on_cpu.py``: at lr 1e-6 most bf16 updates round away).

How each strategy runs 16-bit compute over float32 masters (one ``Precision`` per run, held by the strategy):

- one process, data parallel, ZeRO-1: the parameters *are* the float32 masters (AdamW's moments are created
  like them, so float32 too; ZeRO-1 shards those), and every forward runs under ``torch.autocast`` in the
  compute dtype: the training passes (``ParallelStrategy.passes``) and whatever runs inside
  ``gathered_weights`` (sampling, evaluation, old and reference log-probs). Gradients arrive in float32 and are
  summed over ranks in float32. This is PyTorch's automatic mixed precision, as Hugging Face's Trainer does it
  with ``bf16=True``.
- FSDP2: the decoder layers' sharded parameters are the float32 masters and ``fully_shard`` gets a
  ``MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)``: layers are all-gathered in the compute
  dtype and their gradients reduce-scattered in float32 (torch.distributed.fsdp docs); the whole parameters
  (vision tower, embeddings, lm_head) are float32 under autocast as above.
- DeepSpeed ZeRO-3: the policy is loaded in the compute dtype and DeepSpeed's ``bf16`` config keeps the float32
  master partitions and AdamW state itself; pure bf16 sets its ``bf16_master_weights_and_grads`` and
  ``bf16_optimizer_states`` (``veripo.parallel.deepspeed_zero3``). float16 is refused there.
- float16 compute is refused when the config is read (``ModelConfig.validate``): it needs loss scaling, which
  is not implemented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from veripo.models.grouped_forward import TrainingPasses

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; choose one of {sorted(_DTYPES)}") from None


def check_launcher_precision(precision: Precision, env: Mapping[str, str]) -> None:
    """An ``accelerate launch`` exports its config's ``mixed_precision`` as ``ACCELERATE_MIXED_PRECISION``.
    veripo takes precision from ``model.dtype`` / ``model.master_dtype`` only, so a launcher setting that asks
    for something else is refused rather than silently ignored: ``no`` (the shipped configs) always passes,
    ``bf16`` passes with bf16 compute, ``fp16`` and ``fp8`` are refused (no loss scaling, no fp8 path)."""
    asked = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if asked in ("", "no"):
        return
    if asked == "bf16" and precision.compute == torch.bfloat16:
        return
    hint = ("set mixed_precision: \"no\" in the accelerate config and choose the precision with model.dtype "
            "(compute) and model.master_dtype (masters)")
    if asked == "bf16":
        raise ValueError(f"accelerate mixed_precision is bf16 but model.dtype is {precision.compute}: veripo "
                         f"would run without bf16; {hint}, e.g. model.dtype: bfloat16")
    raise ValueError(f"accelerate mixed_precision {asked!r} is not supported by veripo; {hint}")


@dataclass(frozen=True)
class Precision:
    """The run's compute dtype and master dtype (``model.dtype``, ``model.master_dtype``)."""

    compute: torch.dtype = torch.float32
    master: torch.dtype = torch.float32

    @classmethod
    def of(cls, model_config: Any) -> Precision:
        """From a ``ModelConfig`` (``dtype``, ``master_dtype``)."""
        return cls(torch_dtype(model_config.dtype), torch_dtype(getattr(model_config, "master_dtype", "float32")))

    def __post_init__(self) -> None:
        if self.master not in (torch.float32, self.compute):
            raise ValueError(f"master dtype {self.master} with compute dtype {self.compute}: expected float32 "
                             "master weights or pure training in the compute dtype")

    @property
    def mixed(self) -> bool:
        """Compute in a lower precision than the master weights (autocast)."""
        return self.compute != self.master

    def describe(self) -> str:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
        if self.mixed:
            return (f"{name[self.compute]} compute, {name[self.master]} master weights and AdamW state"
            )
        return f"pure {name[self.compute]}: weights and AdamW state in {name[self.compute]}"

    @contextlib.contextmanager
    def autocast(self, device_type: str) -> Iterator[None]:
        """Forwards in the compute dtype over master-dtype weights (nothing to do unless ``mixed``)."""
        if not self.mixed:
            yield
            return
        with torch.autocast(device_type=device_type, dtype=self.compute):
            yield


class AutocastPasses(TrainingPasses):
    """A strategy's training passes with every forward segment under autocast (backwards outside it, as
    PyTorch's AMP recipe has them)."""

    def __init__(self, inner: TrainingPasses, precision: Precision, device_type: Callable[[], str]) -> None:
        self.inner, self.precision, self.device_type = inner, precision, device_type
        self.collective_layers = inner.collective_layers
        self.collective_vision = inner.collective_vision

    def forward(self, compute: Callable[[], object]) -> object:
        with self.precision.autocast(self.device_type()):
            return self.inner.forward(compute)

    def backward(self, loss: torch.Tensor) -> None:
        self.inner.backward(loss)

    def backward_through(self, tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        self.inner.backward_through(tensors, grads)
