"""The visual feature cache: the vision tower runs once per (media, frame settings, tower weights version).

A video question is seen by the vision tower in every rollout phase, in every training pass over its group
(the shared-prefix prompt pass, or G times in the per-sequence forward), for DPO's reference and policy passes
and in every evaluation. Its output depends only on

- the patchified pixels (``pixel_values_videos`` / ``pixel_values`` rows of one video or image): the media
  content, and the frames sampled and resized from it, hashed (BLAKE2b of the bytes, with dtype and shape);
- the frame/pixel settings that say how the tower reads those rows: the item's ``grid_thw`` (temporal
  patches, patch rows, patch columns). The same pixel bytes under another grid are other features;
- the tower's weights: a version that changes whenever any tower parameter is modified in place (an optimizer
  step, ``load_state_dict``) or replaced (``tower_version``), and the autocast dtype the tower runs under.

When the tower cannot receive a gradient (``model.freeze: [vision]``, or no gradient recorded at all: rollouts,
reference log-probs, evaluation), the model is handed the cached features through transformers'
``mm_encoder_outputs`` argument instead of the pixels (``vision_inputs``); the family builds that argument
(``ModelFamily.vision_features`` / ``encoder_outputs``: Qwen3-VL adds its DeepStack features). A tower that
trains, under gradient, runs as before. Exact: the language model receives the same tensors; the cached ones
carry no graph, which changes nothing because nothing upstream of them trains.

Entries live in memory up to ``memory_bytes`` (least recently used first out); an entry pushed out is written
to ``spill_dir`` as safetensors (tensors only, no pickle) while the files stay under ``disk_bytes``, and read
back on its next use. The key's weights version is meaningful only inside one process, so the spill folder is
emptied when a cache opens on it.

Which cache serves a model: ``use_vision_cache(model, cache)``, held in a weak mapping beside the model (nothing
is stored on the model object); the recipes install one per run (``model.vision_cache*`` keys).
"""

from __future__ import annotations

import hashlib
import shutil
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veripo.models.families import family_of

# (modality as transformers names it, pixels key, grid key)
MEDIA = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))
COUNTERS = ("hits", "misses", "disk_reads", "spills", "dropped")

Features = dict[str, torch.Tensor]  # one image's or video's tower outputs, by name (``pooler_output``, ...)


def _nbytes(features: Features) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


class VisionFeatureCache:
    """Tower outputs by key, in memory up to ``memory_bytes`` with a spill to ``spill_dir`` up to ``disk_bytes``.

    Args:
        memory_bytes: the most bytes of features held in memory (on the model's device).
        disk_bytes: the most bytes of spilled files; 0: an entry pushed out of memory is dropped.
        spill_dir: where spilled entries go (emptied now); needed when ``disk_bytes`` > 0.
    """

    def __init__(self, memory_bytes: int, disk_bytes: int = 0, spill_dir: str | Path | None = None) -> None:
        if memory_bytes < 0 or disk_bytes < 0:
            raise ValueError(f"memory_bytes and disk_bytes must be >= 0; got {memory_bytes}, {disk_bytes}")
        if disk_bytes and spill_dir is None:
            raise ValueError("a disk spill (disk_bytes > 0) needs a spill_dir")
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir.mkdir(parents=True)
        self._memory: OrderedDict[str, Features] = OrderedDict()  # least recently used first
        self._disk: OrderedDict[str, tuple[int, torch.device]] = OrderedDict()  # key -> (file bytes, device)
        self.memory_used = self.disk_used = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._taken = dict.fromkeys(COUNTERS, 0)

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def _path(self, key: str) -> Path:
        return self.spill_dir / f"{key}.safetensors"

    def get(self, key: str) -> Features | None:
        """The features under ``key`` (read back from disk if spilled; counted as a hit), or None (a miss)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.counts["hits"] += 1
            return self._memory[key]
        if key in self._disk:
            from safetensors.torch import load_file

            size, device = self._disk.pop(key)
            path = self._path(key)
            features = load_file(path, device=str(device))
            path.unlink()
            self.disk_used -= size
            self.counts["hits"] += 1
            self.counts["disk_reads"] += 1
            self.put(key, features)
            return features
        self.counts["misses"] += 1
        return None

    def put(self, key: str, features: Features) -> None:
        """Keep ``features`` (detached) under ``key``; what no longer fits in memory spills or is dropped."""
        features = {name: t.detach() for name, t in features.items()}
        self._memory[key] = features
        self.memory_used += _nbytes(features)
        while self.memory_used > self.memory_bytes and self._memory:
            old_key, old = self._memory.popitem(last=False)
            self.memory_used -= _nbytes(old)
            self._spill(old_key, old)

    def _spill(self, key: str, features: Features) -> None:
        size = _nbytes(features)
        if size > self.disk_bytes:
            self.counts["dropped"] += 1
            return
        from safetensors.torch import save_file

        while self.disk_used + size > self.disk_bytes:
            old_key, (old_size, _) = self._disk.popitem(last=False)
            self._path(old_key).unlink()
            self.disk_used -= old_size
            self.counts["dropped"] += 1
        device = next(iter(features.values())).device
        save_file({name: t.contiguous().cpu() for name, t in features.items()}, str(self._path(key)))
        self._disk[key] = (size, device)
        self.disk_used += size
        self.counts["spills"] += 1

    def take_counts(self) -> dict[str, int]:
        """The counters since the previous call (what one metrics row reports)."""
        since = {name: self.counts[name] - self._taken[name] for name in COUNTERS}
        self._taken = dict(self.counts)
        return since


_CACHES: weakref.WeakKeyDictionary[nn.Module, VisionFeatureCache] = weakref.WeakKeyDictionary()


def use_vision_cache(model: nn.Module, cache: VisionFeatureCache | None) -> None:
    """Serve ``model``'s vision tower from ``cache`` (None: stop)."""
    if cache is None:
        _CACHES.pop(model, None)
    else:
        _CACHES[model] = cache


def vision_cache_of(model: nn.Module) -> VisionFeatureCache | None:
    return _CACHES.get(model)


def tower_version(tower: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a tower parameter is modified in place (its autograd version counter: optimizer steps,
    ``load_state_dict``, ``copy_``) or replaced by another tensor (its storage address)."""
    return tuple((p.data_ptr(), p._version) for p in tower.parameters())


def tower_trains(tower: nn.Module) -> bool:
    """Whether the tower's output would carry a gradient now (then it must run, not be read from a cache)."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())


def media_key(pixels: torch.Tensor, grid_thw: torch.Tensor, settings: tuple) -> str:
    """The cache key of one item: its pixels' bytes, its ``grid_thw`` and ``settings`` (the tower's version and
    compute dtype)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((str(pixels.dtype), tuple(pixels.shape), tuple(int(x) for x in grid_thw), settings)).encode())
    digest.update(pixels.detach().contiguous().cpu().view(torch.uint8).numpy())
    return digest.hexdigest()


def _compute_settings(tower: nn.Module) -> tuple:
    device = next(tower.parameters()).device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return hash(tower_version(tower)), str(next(tower.parameters()).dtype), str(autocast)


def _cached_features(model: nn.Module, cache: VisionFeatureCache, modality: str, pixels: torch.Tensor,
                     grid: torch.Tensor, settings: tuple) -> list[Features]:
    """Each item's features: from the cache, the missing ones computed and kept. Each missing item runs the tower
    alone, so its features do not depend on which other items shared a batch: a resumed run, whose cache starts
    empty and fills in other batches, reads bit for bit what the uninterrupted run read."""
    family = family_of(model)
    rows = grid.prod(-1).tolist()
    starts = [sum(rows[:i]) for i in range(len(rows))]
    keys = [media_key(pixels[s : s + n], grid[i], settings) for i, (s, n) in enumerate(zip(starts, rows))]
    found: list[Features | None] = [cache.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    for i in missing:
        with torch.no_grad():
            (features,) = family.vision_features(model, modality, pixels[starts[i] : starts[i] + rows[i]],
                                                 grid[i : i + 1])
        cache.put(keys[i], features)
        found[i] = features
    return found


def vision_inputs(model: nn.Module, inputs: Mapping[str, Any], copies: int = 1) -> dict[str, Any]:
    """``inputs`` for ``model(**...)``, repeated ``copies`` times along the media (rows of the per-sequence
    forward): with the pixels replaced by the cached tower outputs (``mm_encoder_outputs``) when ``model`` has a
    cache and its tower takes no gradient now; otherwise the pixels themselves. Keys other than media pass
    through unchanged (not repeated)."""
    out = dict(inputs)
    cache = vision_cache_of(model)
    family = family_of(model)
    tower = family.vision_tower(model) if cache is not None else None
    use = cache is not None and not tower_trains(tower)
    settings = _compute_settings(tower) if use else ()
    encoded = {}
    for modality, pixels_key, grid_key in MEDIA:
        pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
        if pixels is None:
            continue
        if grid is not None and copies > 1:
            out[grid_key] = grid.repeat(copies, 1)
        if use:
            del out[pixels_key]
            encoded[modality] = family.encoder_outputs(
                _cached_features(model, cache, modality, pixels, grid, settings) * copies)
        elif copies > 1:
            out[pixels_key] = pixels.repeat(copies, 1)
    if encoded:
        out["mm_encoder_outputs"] = encoded
    return out


def vision_cache_counts(model: nn.Module) -> dict[str, int]:
    """``vision_cache_hits`` / ``vision_cache_misses`` (and disk reads) since the previous call, for a metrics
    row; {} when ``model`` has no cache."""
    cache = vision_cache_of(model)
    if cache is None:
        return {}
    counts = cache.take_counts()
    return {f"vision_cache_{name}": counts[name] for name in ("hits", "misses", "disk_reads")}
