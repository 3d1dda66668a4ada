"""logging.trackers: every tracker logs through its own library to a local store, and the scalars read back
from that store equal what was logged, at the logged steps."""

from __future__ import annotations

import importlib.util
import math
import time
import uuid
from pathlib import Path

import pytest

from tests.report import tracker_stores as stores
from veripo.report.trackers import EXTRA, TrackerUnavailable, Trackers, check_available, numeric

ROWS = [
    {"stage": "grpo", "kind": "grpo", "step": 1, "global_step": 3, "loss": 0.25, "reward_mean": 0.5,
     "lr": 1e-6, "time_s": 1.5},
    {"stage": "grpo", "kind": "grpo", "step": 2, "global_step": 4, "loss": -0.125, "reward_mean": 0.75,
     "lr": 1e-6, "time_s": 3.0},
]
EVAL = {"bench": {"accuracy": 0.375, "response_len": 42.0, "judge": "rule", "by_type": {"mc": 0.5}, "n": 8,
                  "missing": None}}
EXPECTED = {
    "grpo/loss": [(3, 0.25), (4, -0.125)],
    "grpo/reward_mean": [(3, 0.5), (4, 0.75)],
    "grpo/lr": [(3, 1e-6), (4, 1e-6)],
    "grpo/time_s": [(3, 1.5), (4, 3.0)],
    "eval/bench/accuracy": [(4, 0.375)],
    "eval/bench/response_len": [(4, 42.0)],
    "eval/bench/by_type/mc": [(4, 0.5)],
    "eval/bench/n": [(4, 8.0)],
}


@pytest.fixture
def plot(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "reward.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path)
    return path


def log_everything(names: list[str], run_dir: Path, project: str, plot: Path) -> None:
    trackers = Trackers.open(names, run_dir, {"name": "t", "seed": 0}, project=project)
    try:
        for row in ROWS:
            trackers.log_row(row)
        trackers.log_metrics({f"eval/{k}": v for k, v in EVAL.items()}, step=4)
        trackers.log_images({"report/reward": plot}, step=4)
    finally:
        trackers.close()


def assert_scalars(got: dict[str, list[tuple[int, float]]], rel: float = 0.0) -> None:
    assert set(got) == set(EXPECTED), sorted(set(got) ^ set(EXPECTED))
    for key, points in EXPECTED.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=rel, abs=0), key


def test_numeric_flattens_numbers_and_keeps_a_diverged_nan() -> None:
    got = numeric({"a": 1, "b": True, "c": None, "d": float("nan"), "e": {"f": 2.5, "g": "x"}, "h": "3"})
    assert set(got) == {"a", "d", "e/f"} and got["a"] == 1.0 and got["e/f"] == 2.5 and math.isnan(got["d"])


def test_tensorboard_scalars_read_back(tmp_path: Path, plot: Path) -> None:
    log_everything(["tensorboard"], tmp_path / "run-a", "p", plot)
    assert_scalars(stores.tensorboard_scalars(tmp_path / "run-a" / "trackers"), rel=1e-6)  # stored as float32
    assert stores.tensorboard_images(tmp_path / "run-a" / "trackers") == ["report/reward"]


@pytest.mark.slow  # the first W&B run of a process starts wandb's core service (about 10 s)
def test_wandb_offline_scalars_read_back(tmp_path: Path, plot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_everything(["wandb"], tmp_path / "run-a", "p", plot)
    assert_scalars(stores.wandb_scalars(tmp_path / "run-a" / "trackers"))
    rows = stores.wandb_history(tmp_path / "run-a" / "trackers")
    assert [row["_step"] for row in rows if row.get("report/reward/_type") == "image-file"] == [4]


def test_mlflow_file_store_scalars_read_back(tmp_path: Path, plot: Path) -> None:
    log_everything(["mlflow"], tmp_path / "run-a", "proj", plot)
    store = tmp_path / "run-a" / "trackers"
    assert_scalars(stores.mlflow_scalars(store, "proj", "run-a"))
    assert stores.mlflow_artifacts(store, "proj", "run-a", "report") == ["reward.png"]


def test_trackio_local_scalars_read_back(tmp_path: Path, plot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # used when trackio is first imported
    project = f"veripo-test-{uuid.uuid4().hex[:8]}"  # the store may be shared when trackio was imported before
    log_everything(["trackio"], tmp_path / "run-a", project, plot)
    assert_scalars(stores.trackio_scalars(project, "run-a"))
    images = [row["report/reward"] for row in stores.trackio_logs(project, "run-a") if "report/reward" in row]
    assert len(images) == 1 and images[0]["_type"] == "trackio.image"


@pytest.mark.slow
def test_all_four_at_once_and_a_resumed_run_continues_the_same_runs(tmp_path: Path, plot: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    project = f"veripo-test-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run-b"
    first = Trackers.open(["tensorboard", "wandb", "mlflow", "trackio"], run_dir, {}, project=project)
    first.log_row(ROWS[0])
    first.close()
    time.sleep(1.1)  # W&B names an offline session's folder by the second it started; a real resume is later
    second = Trackers.open(["tensorboard", "wandb", "mlflow", "trackio"], run_dir, {}, project=project)  # resume
    second.log_row(ROWS[1])
    second.log_metrics({"grpo/diverged": float("nan")}, step=4)  # a NaN reaches every store as NaN
    second.close()
    store = run_dir / "trackers"
    want = [(3, 0.25), (4, -0.125)]
    assert stores.tensorboard_scalars(store)["grpo/loss"] == want
    assert stores.wandb_scalars(store)["grpo/loss"] == want
    files = sorted((store / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and len({f.name for f in files}) == 1  # two sessions of one W&B run id
    assert stores.mlflow_scalars(store, project, "run-b")["grpo/loss"] == want
    assert stores.trackio_scalars(project, "run-b")["grpo/loss"] == want
    for got in (stores.tensorboard_scalars(store), stores.wandb_scalars(store),
                stores.mlflow_scalars(store, project, "run-b"), stores.trackio_scalars(project, "run-b")):
        ((step, value),) = got["grpo/diverged"]
        assert step == 4 and math.isnan(value)


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    check_available(["tensorboard", "mlflow"])
    with pytest.raises(TrackerUnavailable) as err:
        check_available(["tensorboard", "wandb"])
    message = str(err.value)
    assert "\n" not in message and "'wandb'" in message and EXTRA in message and "logging.trackers" in message


def test_online_mlflow_without_a_server_is_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from veripo.config import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_available(["mlflow"])  # offline: a file store in the run
    with pytest.raises(ConfigError, match=r"'logging.mode': online MLflow logs to \$MLFLOW_TRACKING_URI"):
        check_available(["mlflow"], online=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    check_available(["mlflow"], online=True)
