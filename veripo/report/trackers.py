"""Experiment trackers (``logging.trackers``): the run's metric rows, held-out evaluation results and report plots,
sent to TensorBoard, Weights & Biases, MLflow and trackio through their own libraries.

The run's own files (``metrics.jsonl``, ``summary.json``, ``report/``) stay the record a resumed run rebuilds
exactly; a tracker is a copy for the tools people already watch. Each tracker here is one small class with
``log_metrics(values, step)``, ``log_images(paths, step)`` and ``close()``, opened by name from ``TRACKERS``.
Steps are the run's global optimizer step. Offline (the default) everything stays under ``<run dir>/trackers``:
TensorBoard event files, a W&B offline run (``wandb sync`` uploads it later), an MLflow file store and trackio's
local SQLite database (``$TRACKIO_DIR`` when set).

After a ``kill -9`` the resumed run redoes the work after its last checkpoint and logs those rows again, at the
same steps with the same values (the resume is exact); a tracker's store can then hold a step twice. W&B and
trackio resume their run by id / name, MLflow finds its run by name, TensorBoard appends an event file.

How the peers open them (read, not copied): EasyR1 ``verl/utils/logger/logger.py`` (one class per backend behind
a common ``log(data, step)``), TRL's ``report_to`` through transformers' ``integrations/integration_utils.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veripo.config import ConfigError

EXTRA = "pip install 'veripo[trackers]'"
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


class TrackerUnavailable(ConfigError):
    """A tracker the config names whose library is not installed (one line naming the extra)."""


class Tracker(Protocol):
    def log_metrics(self, values: Mapping[str, float], step: int) -> None: ...

    def log_images(self, images: Mapping[str, Path], step: int) -> None: ...

    def close(self) -> None: ...


def check_available(names: Iterable[str], online: bool = False) -> None:
    """Raise ``TrackerUnavailable`` for the first tracker whose package cannot be imported, a ``ConfigError`` for
    online MLflow without a server to log to (checked before a run writes anything)."""
    names = list(names)
    if online and "mlflow" in names and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("config key 'logging.mode': online MLflow logs to $MLFLOW_TRACKING_URI, which is not set; "
                          "set it to your server, or use mode offline (a file store in the run)")
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(f"config key 'logging.trackers': unknown tracker {name!r}; expected any of {sorted(PACKAGES)}")
        package = PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise TrackerUnavailable(f"config key 'logging.trackers': {name} needs the '{package}' package, which is "
                                     f"not installed: {EXTRA}")


def _import(name: str) -> Any:
    check_available([name])
    return importlib.import_module(PACKAGES[name])


@dataclass(frozen=True)
class TrackerRun:
    """What every tracker is opened with."""

    store: Path  # <run dir>/trackers: the local stores
    name: str  # the run folder's name
    project: str  # logging.project
    config: Mapping[str, Any]  # the run's config as plain data
    online: bool  # logging.mode == "online"


def run_id(run: TrackerRun) -> str:
    """A tracker run id from the run folder's name (timestamped) and its config: the same for a resumed run, also
    after the folder was moved, different for another run; within W&B's allowed characters."""
    digest = hashlib.sha1(json.dumps(run.config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '-', run.name)[:55]}-{digest}"


class TensorBoardTracker:
    def __init__(self, run: TrackerRun) -> None:
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.store / "tensorboard"))
        self.writer.add_text("config", f"```\n{_yaml(run.config)}\n```", 0)

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        for key, path in images.items():
            self.writer.add_image(key, _rgb(path), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunObjectTracker:
    """W&B and trackio share one shape: a run object with ``log(values, step=)`` and ``finish()``, and an image
    type that wraps a file."""

    run: Any
    image: Callable[[str], Any]

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        self.run.log({key: self.image(str(path)) for key, path in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbTracker(RunObjectTracker):
    def __init__(self, run: TrackerRun) -> None:
        wandb = _import("wandb")
        self.image = wandb.Image
        (run.store / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=run.project, name=run.name, id=run_id(run),
                              dir=str(run.store / "wandb"), config=dict(run.config),
                              mode="online" if run.online else "offline", resume="allow")

class MLflowTracker:
    def __init__(self, run: TrackerRun) -> None:
        _import("mlflow")
        if run.online:
            uri = os.environ["MLFLOW_TRACKING_URI"]  # check_available made sure
        else:
            # mlflow 3 keeps the file store only on request (its database store needs sqlalchemy, which
            # mlflow-skinny leaves out); the store is local to the run, so nothing else shares it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run.store / "mlruns").resolve().as_uri()
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(run.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(run.project)
        found = self.client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{run.name}'",
                                        max_results=1)
        if found:  # a resumed run continues its MLflow run
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run.name).info.run_id
            self.client.log_text(self.run_id, _yaml(run.config), "config.yaml")

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(_mlflow_key(k), float(v), now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        for key, path in images.items():
            self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(key).parent))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker(RunObjectTracker):
    def __init__(self, run: TrackerRun) -> None:
        if "trackio" not in sys.modules:  # trackio reads its folder once, on import
            os.environ.setdefault("TRACKIO_DIR", str(run.store / "trackio"))
        trackio = _import("trackio")
        self.image = trackio.Image
        self.run = trackio.init(project=run.project, name=run.name, config=dict(run.config), resume="allow",
                                auto_log_cpu=False, auto_log_gpu=False)


TRACKERS: dict[str, Callable[[TrackerRun], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
    "trackio": TrackioTracker,
}


class Trackers:
    """The run's open trackers (none: every call does nothing). Only rank 0 opens any."""

    def __init__(self, trackers: Mapping[str, Tracker] | None = None) -> None:
        self.trackers = dict(trackers or {})

    @classmethod
    def open(cls, names: Iterable[str], run_dir: Path, config: Mapping[str, Any], project: str = "veripo",
             online: bool = False) -> Trackers:
        """Open the named trackers for the run in ``run_dir`` (``config``: the run's config as plain data)."""
        names = list(names)
        check_available(names, online)
        run = TrackerRun(Path(run_dir) / "trackers", Path(run_dir).name, project, config, online)
        opened: dict[str, Tracker] = {}
        try:
            for name in names:
                opened[name] = TRACKERS[name](run)
        except BaseException:
            cls(opened).close()
            raise
        return cls(opened)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_metrics(self, values: Mapping[str, Any], step: int) -> None:
        numbers = numeric(values)
        if numbers:
            for tracker in self.trackers.values():
                tracker.log_metrics(numbers, step)

    def log_row(self, row: Mapping[str, Any]) -> None:
        """A ``metrics.jsonl`` row, its numbers under ``<kind>/`` (``grpo/loss``), at its global step."""
        skip = {"stage", "kind", "step", "global_step"}
        self.log_metrics({f"{row['kind']}/{k}": v for k, v in row.items() if k not in skip}, int(row["global_step"]))

    def log_images(self, images: Mapping[str, Path], step: int) -> None:
        if images:
            for tracker in self.trackers.values():
                tracker.log_images(images, step)

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}


def numeric(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of ``values``, nested dicts flattened with ``/``; booleans, None and text left out. NaN and
    infinities stay: a loss that diverged must show in the tracker too."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _mlflow_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)  # MLflow's allowed metric-name characters


def _rgb(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
