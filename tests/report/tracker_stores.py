"""Read logged scalars back from each tracker's local store, through that tracker's own reader where it has one:
{key: [(step, value), ...]} in logging order."""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path


def tensorboard_scalars(store: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(store / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_images(store: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(store / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def mlflow_scalars(store: Path, project: str, run_name: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(store / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(project)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in run.data.metrics}


def mlflow_artifacts(store: Path, project: str, run_name: str, folder: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(store / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(project)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    return [Path(a.path).name for a in client.list_artifacts(run.info.run_id, folder)]


def trackio_scalars(project: str, run_name: str) -> dict[str, list[tuple[int, float]]]:
    from trackio.sqlite_storage import SQLiteStorage

    out: dict[str, list[tuple[int, float]]] = {}
    for row in SQLiteStorage.get_logs(project, run_name):
        for key, value in row.items():
            if key not in ("step", "timestamp") and isinstance(value, (int, float)):
                out.setdefault(key, []).append((row["step"], float(value)))
    return out


def trackio_logs(project: str, run_name: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs(project, run_name)


# W&B's offline run file (run-<id>.wandb) is a LevelDB-style log of protobuf Records: a 7-byte file header
# (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length,
# type FULL/FIRST/MIDDLE/LAST). wandb 0.31 writes it from its Go core and ships no Python reader; this follows
# the framing of wandb's former wandb/sdk/internal/datastore.py.
_BLOCK = 32768


def _wandb_payloads(path: Path):
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:  # block trailer: zero padding
            pos += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad checksum at {pos}"
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def _wandb_records(path: Path, timeout_s: float = 30.0) -> list:
    """The records of one run file, once its exit record is there: wandb's core process writes the file and
    can still be writing it for a moment after ``run.finish()`` returns."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        for payload in _wandb_payloads(path):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(store: Path) -> list[dict]:
    """Every history row of every offline run file under ``store/wandb`` (a resumed run adds a file)."""
    rows = []
    for path in sorted((store / "wandb").glob("wandb/offline-run-*/run-*.wandb")):
        for record in _wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def wandb_scalars(store: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for row in wandb_history(store):
        media = {key.rsplit("/", 1)[0] for key in row if key.endswith("/_type")}  # an image's own fields
        for key, value in row.items():
            if not key.startswith("_") and key.rsplit("/", 1)[0] not in media and isinstance(value, (int, float)):
                out.setdefault(key, []).append((row["_step"], float(value)))
    return out
