"""Checkpoints that survive ``kill -9`` and resume exactly.

A checkpoint is a folder ``ckpt-<step>/`` holding the model (``save_pretrained``: safetensors plus config,
so any checkpoint loads with ``load_policy``; with LoRA the adapters alone, in PEFT's format, which
``load_policy`` puts on their base model), the processor files, the optimizer and scheduler state
(``torch.save``; loaded with ``weights_only=True``) and ``progress.json`` (counters and the byte sizes of
the stage's JSONL outputs at that moment). ``latest.json`` names the newest complete checkpoint and is
written atomically after the folder is complete, so a kill mid-save leaves the previous one in force.
On resume the outputs are truncated back to the recorded sizes: work after the checkpoint is redone
(deterministically: every random draw is seeded from the run seed, stage and step), never duplicated.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from veripo.errors import RunStateError
from veripo.models.adapters import has_adapters, load_adapters, save_adapters
from veripo.parallel import ParallelStrategy
from veripo.recipes.run_dir import atomic_write_json, read_json

LATEST = "latest.json"
BEST = "best"  # the best checkpoint by held-out accuracy, beside checkpoints/ (weights and processor only)


@dataclass
class Progress:
    """Counters of a stage; ``outputs`` maps a JSONL file name to its byte size at checkpoint time."""

    step: int = 0  # optimizer steps taken in this stage
    unit: int = 0  # completed work units (rollout batches for GRPO, epochs x batches for SFT/DPO)
    global_step: int = 0  # optimizer steps across the run when this stage started + step
    done: bool = False
    outputs: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def output_sizes(stage_dir: Path, names: list[str]) -> dict[str, int]:
    return {n: (stage_dir / n).stat().st_size if (stage_dir / n).exists() else 0 for n in names}


def truncate_outputs(stage_dir: Path, sizes: dict[str, int]) -> None:
    """Cut each output file back to its checkpointed size (drop records written after the checkpoint)."""
    for name, size in sizes.items():
        path = stage_dir / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)


def save_checkpoint(
    stage_dir: Path,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    progress: Progress,
    keep: int = 1,
    *,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``ckpt-<unit>/`` completely, then point ``latest.json`` at it; keep the newest ``keep``.

    ``model_state``/``optimizer_state``: whole tensors gathered from a weight-sharded model (saved instead of
    the model's and optimizer's own state dicts, which hold only this rank's shards)."""
    ckpt_root = stage_dir / "checkpoints"
    final = ckpt_root / f"ckpt-{progress.unit:06d}"
    tmp = ckpt_root / f".tmp-ckpt-{progress.unit:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if has_adapters(model):  # LoRA: the base never changes, the adapters are the trained weights
        save_adapters(model, tmp)
    else:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(tmp)
    if optimizer is not None:
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    atomic_write_json(tmp / "progress.json", progress.__dict__)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(stage_dir / LATEST, {"checkpoint": final.name})
    for old in sorted(p for p in ckpt_root.glob("ckpt-*") if p != final)[: max(0, len(list(ckpt_root.glob("ckpt-*"))) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(stage_dir: Path) -> Path | None:
    pointer = read_json(stage_dir / LATEST)
    if not pointer:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("checkpoint"), str) or "/" in pointer["checkpoint"]:
        raise RunStateError(f"{stage_dir / LATEST}: corrupt (expected {{\"checkpoint\": \"ckpt-NNNNNN\"}})")
    path = stage_dir / "checkpoints" / pointer["checkpoint"]
    return path if (path / "progress.json").exists() else None


def load_progress(ckpt: Path) -> Progress:
    return Progress(**read_json(ckpt / "progress.json"))


def load_model_weights(model: torch.nn.Module, ckpt: Path, parallel: ParallelStrategy | None = None) -> None:
    """Load a checkpoint saved by ``save_pretrained`` into an existing model (strict), through the
    ``parallel`` strategy that holds it (each rank keeps what the strategy gives it).

    Goes through ``from_pretrained`` because transformers renames keys on save (Qwen2.5-VL's
    ``model.visual.*`` is stored as ``visual.*``) and knows how to map them back.
    """
    if has_adapters(model):
        load_adapters(model, ckpt)  # LoRA runs refuse weight sharding, so every rank holds its adapters whole
        return
    if not any(ckpt.glob("*.safetensors")):
        raise FileNotFoundError(f"{ckpt}: no *.safetensors weights in this checkpoint")
    if parallel is None:
        parallel = ParallelStrategy()
        parallel.prepare(model)
    fresh = type(model).from_pretrained(ckpt, dtype=parallel.precision.master)  # the masters, not their rounding
    parallel.load_weights(fresh.state_dict(), ckpt)
    del fresh


def load_training_state(ckpt: Path, optimizer: torch.optim.Optimizer | None, scheduler: Any,
                        parallel: ParallelStrategy | None = None) -> None:
    """Optimizer and scheduler state (the optimizer's through the ``parallel`` strategy that built it)."""
    if optimizer is not None and (ckpt / "optimizer.pt").exists():
        state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        if parallel is None:
            optimizer.load_state_dict(state)
        else:
            parallel.load_optimizer_state(optimizer, state)
    if scheduler is not None and (ckpt / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))


def save_best(stage_dir: Path, model: torch.nn.Module, processor: Any, record: dict[str, Any], *,
              model_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the weights (and processor) of the best evaluation so far to ``<stage>/best/`` with ``best.json``
    (``record``: step, score, metrics): complete in a temporary folder first, then swapped in, so a kill leaves
    the previous best (or none) whole."""
    final, tmp, old = stage_dir / BEST, stage_dir / f".tmp-{BEST}", stage_dir / f".old-{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(tmp)
    atomic_write_json(tmp / "best.json", record)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
