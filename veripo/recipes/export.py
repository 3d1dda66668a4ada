"""``veripo export RUN_DIR``: the run's final policy as one plain model directory that ``from_pretrained`` loads.

The final weights are the newest checkpoint of the last training stage that took a step (``state.json``).
A LoRA run's checkpoints hold adapters only: they are put on their base model (``base_model_dir``) and
merged into its weights (``PeftModel.merge_and_unload``), so the export needs neither peft nor veripo to
load. A full fine-tuning checkpoint is written out as it is. The folder is written beside its destination
and renamed into place, so a killed export leaves no half model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from veripo.config import RunConfig, load
from veripo.models import load_policy
from veripo.models.adapters import is_adapter_folder, merged_model, read_adapter_config
from veripo.recipes.checkpoint import latest_checkpoint
from veripo.recipes.run_dir import RunDir


def final_checkpoint(run: RunDir) -> Path:
    """The newest checkpoint of the run's last training stage that took an optimizer step."""
    state = run.read_state()
    for entry in reversed(state.get("completed", [])):
        if entry.get("kind") in ("sft", "grpo", "dpo") and entry.get("steps", 0) > 0:
            ckpt = latest_checkpoint(run.stage_dir(entry["index"], entry["name"]))
            if ckpt is not None:
                return ckpt
    raise ValueError(f"{run.root}: no finished training stage with a checkpoint to export (state.json)")


def base_model_dir(run: RunDir, cfg: RunConfig, ckpt: Path) -> Path:
    """The full model a LoRA checkpoint's adapters belong on: the one its adapter_config.json names, else the
    run's own (``model.path``, or the tiny model built in the run), whichever is a model directory first (a
    moved run's recorded path may be gone; a warm start's ``model.path`` may itself be adapters)."""
    candidates = [read_adapter_config(ckpt).get("base_model_name_or_path"), cfg.model.path,
                  run.root / "base-model"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    raise ValueError(f"{ckpt}: none of {[str(c) for c in candidates if c]} is a model directory to merge the "
                     "adapters into")


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's final policy to ``out`` (default ``<run>/export``); returns the folder.

    Raises ValueError naming the run directory when it is not a run or has nothing trained to export, and
    FileExistsError when ``out`` exists."""
    run = RunDir(Path(run_dir).resolve())
    if not run.config_path.is_file():
        raise ValueError(f"{run.root}: not a veripo run directory (no config.yaml)")
    cfg = load(RunConfig, run.config_path)
    target = Path(out).resolve() if out is not None else run.root / "export"
    if target.exists():
        raise FileExistsError(f"{target}: already exists; remove it or pass another --out")
    ckpt = final_checkpoint(run)
    if is_adapter_folder(ckpt):
        policy = load_policy(base_model_dir(run, cfg, ckpt), dtype=cfg.model.dtype)
        model = merged_model(policy.model, ckpt)
    else:
        policy = load_policy(ckpt, dtype=cfg.model.dtype)
        model = policy.model
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    policy.processor.save_pretrained(tmp)
    tmp.rename(target)
    return target
