"""A real VerIPO run killed with SIGKILL at several points and resumed ends exactly where an uninterrupted
run ends: the same final weights, the same metrics, rollouts and pairs, nothing written twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CONFIG = """
name: resume
seed: 3
model: {build_tiny: tiny, device: cpu}
media: {max_frames: 4, max_pixels: 3136}
rollout: {num_generations: 4, max_new_tokens: 24}
data:
  - {path: synthetic/train, synthetic: {n: 12, seed: 1, kinds: [video, image, text], frames: [4, 4], size: 56}}
eval:
  max_new_tokens: 16
  batch_size: 4
  profile: veripo
  heldout:
    - {path: synthetic/heldout, name: heldout, synthetic: {n: 4, seed: 9, kinds: [video], frames: [4, 4], size: 56}}
sft: {lr: 3.0e-3, batch_size: 4, epochs: 1, save_every: 1}
grpo: {lr: 1.0e-3, rollout_batch_size: 2, global_batch_size: 8, max_steps: 3, save_every: 1, eval_every: 2}
dpo: {lr: 1.0e-3, global_batch_size: 2, epochs: 2}
verifier: {max_pairs_per_question: 2, construct_reflective: true, reference_chosen: true}
iterations: 0
stages:
  - {name: sft, kind: sft}
  - name: grpo
    kind: grpo
    data:  # questions of its own: after a resume the verifier and DPO must still find them
      - {path: synthetic/grpo, synthetic: {n: 6, seed: 2, kinds: [video, image], frames: [4, 4], size: 56}}
  - {name: verify, kind: verify}
  - {name: dpo, kind: dpo}
"""


def _start(args: list[str], cwd: Path, processes: int = 1, **extra_env: str) -> subprocess.Popen:
    """``veripo run ARGS``; with ``processes`` > 1 under torch.distributed.run."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(VERIPO_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               **extra_env)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.Popen([*launcher, "-m", "veripo", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> Path:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return next(Path(line) for line in reversed(out.strip().splitlines()) if Path(line).is_absolute() and Path(line).is_dir())


def _kill_when(proc: subprocess.Popen, root: Path, pattern: str, timeout: float = 300) -> bool:
    """SIGKILL the run (every process of it) as soon as a file matching ``pattern`` exists under ``root``;
    False if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if any(root.glob(pattern)):
            # torch.distributed.run starts each worker in a session of its own: kill the whole process tree
            tree = [proc.pid, *(child.pid for child in psutil.Process(proc.pid).children(recursive=True))]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            psutil.wait_procs([p for p in map(_process, tree) if p is not None], timeout=30)
            return True
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{pattern} never appeared under {root}")


def _kill_and_resume(args: list[str], cwd: Path, out: Path, kill_points, processes: int = 1,
                     **extra_env: str) -> tuple[subprocess.Popen, int]:
    """Start ``veripo run ARGS`` writing under ``out``; at each of ``kill_points`` in turn SIGKILL it and resume
    its run directory the same way (same processes and environment). Returns the last, still running process and
    how many kills happened (fewer than the points when the run finished first)."""
    proc = _start(args, cwd, processes, **extra_env)
    kills = 0
    for pattern in kill_points:
        if not _kill_when(proc, out, pattern):
            break
        kills += 1
        proc = _start(["--resume", str(next(out.iterdir()))], cwd, processes, **extra_env)
    return proc, kills


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    stage = sorted((run / "stages").glob("*-dpo"))[0]
    pointer = json.loads((stage / "latest.json").read_text())["checkpoint"]
    return load_file(str(stage / "checkpoints" / pointer / "model.safetensors"))


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


# a resumed process starts with an empty visual feature cache: its hit and miss counts differ, its results do not
RUN_DEPENDENT = ("time_s", "sample", "vision_cache_hits", "vision_cache_misses", "vision_cache_disk_reads")


def _records(path: Path, drop: tuple[str, ...] = RUN_DEPENDENT) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run both tests compare against."""
    root = tmp_path_factory.mktemp("clean")
    (root / "cfg.yaml").write_text(CONFIG)
    return root / _finish(_start(["cfg.yaml", "output_dir=runs"], root))


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path: Path, clean_run: Path):
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    clean = clean_run

    out = tmp_path / "killed"
    kill_points = [
        "*/stages/00-sft/checkpoints/ckpt-000001",      # mid SFT
        "*/stages/01-grpo/checkpoints/ckpt-000001",     # mid GRPO, after the first rollout batch
        "*/stages/01-grpo/eval-steps/step-000002/heldout/predictions.jsonl",  # the stage's own eval_every
        "*/stages/01-grpo/eval/heldout/predictions.jsonl",  # during the held-out evaluation
        "*/stages/02-verify/verify_summary.json",      # right after the verifier
        "*/stages/03-dpo/reference_logps.json",        # DPO, before its first step
    ]
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}"], tmp_path, out, kill_points)
    resumed = _finish(proc)
    assert kills >= 3, f"the run finished before most kill points ({kills} kills)"

    a, b = _final_weights(clean), _final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    best = "stages/01-grpo/best"  # grpo.eval_every: 2 kept the weights of its evaluation at step 2
    assert json.loads((clean / best / "best.json").read_text()) == json.loads((resumed / best / "best.json").read_text())
    best_a, best_b = load_file(str(clean / best / "model.safetensors")), load_file(str(resumed / best / "model.safetensors"))
    assert all(torch.equal(best_a[name], best_b[name]) for name in best_a)
    for rel in ("stages/00-sft/metrics.jsonl", "stages/01-grpo/metrics.jsonl", "stages/01-grpo/rollouts.jsonl",
                "stages/01-grpo/question_stats.jsonl", "stages/02-verify/pairs.jsonl", "stages/03-dpo/metrics.jsonl",
                "stages/03-dpo/eval/heldout/predictions.jsonl"):
        assert _records(clean / rel) == _records(resumed / rel), rel
    summary_a = json.loads((clean / "summary.json").read_text())
    summary_b = json.loads((resumed / "summary.json").read_text())
    strip = lambda s: [{k: v for k, v in st.items() if k != "wall_time_s" and k != "eval"} for st in s["stages"]]  # noqa: E731
    assert strip(summary_a) == strip(summary_b)
    assert [st.get("eval", {}).get("heldout", {}).get("accuracy") for st in summary_a["stages"]] == \
           [st.get("eval", {}).get("heldout", {}).get("accuracy") for st in summary_b["stages"]]
    assert (resumed / "report" / "index.html").exists()


def family_config(family: str) -> str:
    """CONFIG with ``family``'s tiny model; 64 px frames for patch 16 (the 56 px budget would shrink them to 32)."""
    return CONFIG.replace("model: {build_tiny: tiny, device: cpu}",
                          f"model: {{build_tiny: tiny, device: cpu, family: {family}}}").replace(
        "max_pixels: 3136", "max_pixels: 4096")


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_killed_and_resumed_run_of_each_family_equals_uninterrupted(tmp_path: Path, family: str):
    """The other families' tiny models: killed mid SFT, mid GRPO and before DPO's first step, the resumed run ends
    with the uninterrupted run's weights, rollouts and pairs."""
    config = family_config(family)
    assert f"family: {family}" in config and "max_pixels: 4096" in config
    (tmp_path / "cfg.yaml").write_text(config)
    clean = tmp_path / _finish(_start(["cfg.yaml", "output_dir=clean"], tmp_path))
    assert json.loads((clean / "base-model" / "config.json").read_text())["model_type"] == family.replace(".", "_").replace("-", "_")
    out = tmp_path / "killed"
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}"], tmp_path, out, (
        "*/stages/00-sft/checkpoints/ckpt-000001", "*/stages/01-grpo/checkpoints/ckpt-000001",
        "*/stages/03-dpo/reference_logps.json"))
    resumed = _finish(proc)
    assert kills >= 2, f"the run finished before most kill points ({kills} kills)"
    a, b = _final_weights(clean), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    for rel in ("stages/01-grpo/rollouts.jsonl", "stages/02-verify/pairs.jsonl", "stages/03-dpo/metrics.jsonl"):
        assert _records(clean / rel) == _records(resumed / rel), rel


def test_resumed_between_stages_finds_the_questions_of_finished_stages(tmp_path: Path, clean_run: Path):
    """Stopped after the GRPO stage was recorded as finished and before the verifier finished (a kill there
    is a race a timer cannot hit reliably, so a copy of the run directory, elsewhere, is cut back to that
    point): the resumed verifier must judge the GRPO stage's own questions, not silently build no pairs, and
    the copy must read its own files, not the original's."""
    run = tmp_path / clean_run.name
    shutil.copytree(clean_run, run)
    state = json.loads((run / "state.json").read_text())  # a copied run directory resumes where it lies
    state["completed"] = [e for e in state["completed"] if e["index"] < 2]
    state["current"] = None
    (run / "state.json").write_text(json.dumps(state))
    summary = json.loads((run / "summary.json").read_text())
    summary["stages"] = [st for st in summary["stages"] if st["index"] < 2]
    (run / "summary.json").write_text(json.dumps(summary))
    for stage in ("02-verify", "03-dpo"):
        shutil.rmtree(run / "stages" / stage)
    shutil.rmtree(run / "report")
    assert str(clean_run) not in (run / "state.json").read_text()

    resumed = _finish(_start(["--resume", str(run)], tmp_path))
    pairs = _records(clean_run / "stages/02-verify/pairs.jsonl")
    assert pairs and _records(resumed / "stages/02-verify/pairs.jsonl") == pairs
    assert any(p["sample_id"].startswith("grpo") for p in pairs)  # the GRPO stage's own questions
    a, b = _final_weights(clean_run), _final_weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


SHARDED = "distributed.shard_weights=true"


@pytest.fixture(scope="module")
def sharded_clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config, uninterrupted, with two processes and the decoder layers sharded (FSDP2)."""
    root = tmp_path_factory.mktemp("sharded-clean")
    (root / "cfg.yaml").write_text(CONFIG)
    return _finish(_start(["cfg.yaml", "output_dir=runs", SHARDED], root, processes=2))


def test_killed_and_resumed_sharded_run_equals_uninterrupted(tmp_path: Path, sharded_clean_run: Path):
    """Weight sharding: every process of a two-process run SIGKILLed mid-GRPO, during an evaluation and
    mid-DPO, and resumed each time, ends bit-identical to the uninterrupted sharded run (checkpoints hold whole
    tensors; each resumed rank takes its shards of the weights and of the AdamW state back)."""
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out = tmp_path / "killed"
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}", SHARDED], tmp_path, out, (
        "*/stages/01-grpo/checkpoints/ckpt-000001",  # mid GRPO (SFT is too quick to hit)
        "*/stages/01-grpo/eval/heldout/predictions.jsonl",  # during the held-out evaluation
        # mid DPO, where AdamW's moments are not zero (GRPO's are: no reward varies in a group of this short
        # run), so a resumed rank must take its shards of them back
        "*/stages/03-dpo/checkpoints/ckpt-00000[3-9]"), processes=2)
    resumed = _finish(proc)
    assert kills == 3, f"the run finished before a kill point ({kills} kills)"
    assert "shard_weights: true" in (resumed / "config.yaml").read_text()
    a, b = _final_weights(sharded_clean_run), _final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for rel in ("stages/00-sft/metrics.jsonl", "stages/01-grpo/rollouts.jsonl", "stages/02-verify/pairs.jsonl",
                "stages/03-dpo/metrics.jsonl"):
        assert _records(sharded_clean_run / rel) == _records(resumed / rel), rel


HSDP_LAUNCH = {"ACCELERATE_USE_PARALLELISM_CONFIG": "true", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "2",
               "PARALLELISM_CONFIG_DP_SHARD_SIZE": "2"}


@pytest.mark.parametrize(("processes", "overrides", "launch", "expected"), [
    (2, [], {}, ["decoder layers sharded over 2 ranks (FSDP2)"]),
    (4, ["distributed.shard_optimizer=true"], HSDP_LAUNCH,  # no effect in the one-process part of the run
     ["decoder layers sharded over groups of 2 ranks, 2 replicas (HSDP",
      "[dpo] AdamW state of the whole parameters sharded over 4 ranks"]),
], ids=["fsdp2", "hsdp-2x2-zero1"])
def test_a_one_process_run_resumes_sharded_under_an_accelerate_fsdp2_launch(tmp_path: Path, clean_run: Path,
                                                                            processes, overrides, launch, expected):
    """The checkpoint formats do not depend on sharding: a one-process run killed mid-DPO resumes with two
    processes whose layers are sharded (or four: two replicas sharding over two ranks each, the whole
    parameters' AdamW state split over the four), switched on the way ``accelerate launch`` with an FSDP2
    config (and a parallelism_config) does, its environment, and ends where the uninterrupted one-process run
    ends, up to the rounding of summing gradients over several processes."""
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out = tmp_path / "killed"
    proc = _start(["cfg.yaml", f"output_dir={out}", *overrides], tmp_path)
    assert _kill_when(proc, out, "*/stages/03-dpo/checkpoints/ckpt-00000[3-9]"), "the run finished first"
    proc = _start(["--resume", str(next(out.iterdir()))], tmp_path, processes=processes,
                  ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", **launch)
    out_text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out_text[-3000:]
    printed = " ".join(out_text.split())  # rich wraps long lines
    assert all(line in printed for line in expected), out_text[-3000:]
    assert "[dpo] resumed from ckpt-" in out_text
    resumed = next(out.iterdir())
    steps = [len(_records(run / "stages/03-dpo/metrics.jsonl")) for run in (clean_run, resumed)]
    assert steps[0] == steps[1], f"DPO steps: uninterrupted {steps[0]}, resumed {steps[1]}"
    a, b = _final_weights(clean_run), _final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


DEEPSPEED_LAUNCH = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


@pytest.fixture(scope="module")
def deepspeed_clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config, uninterrupted, with two processes under DeepSpeed ZeRO-3 (the config key)."""
    root = tmp_path_factory.mktemp("deepspeed-clean")
    (root / "cfg.yaml").write_text(CONFIG)
    return _finish(_start(["cfg.yaml", "output_dir=runs", "distributed.deepspeed_zero3=true"], root, processes=2))


def test_killed_and_resumed_deepspeed_run_equals_uninterrupted(tmp_path: Path, deepspeed_clean_run: Path):
    """DeepSpeed ZeRO-3, switched on the way ``accelerate launch`` with a DeepSpeed config does (its
    environment): both processes SIGKILLed mid-GRPO and mid-DPO, resumed each time, end bit-identical to the
    uninterrupted run. Each stage builds a new engine; a resumed one loads the whole weights and AdamW state
    from the plain-format checkpoint and keeps its partitions."""
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    out = tmp_path / "killed"
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}"], tmp_path, out, (
        "*/stages/01-grpo/checkpoints/ckpt-000001", "*/stages/03-dpo/checkpoints/ckpt-00000[3-9]"),
        processes=2, **DEEPSPEED_LAUNCH)
    out_text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out_text[-3000:]
    assert kills == 2, f"the run finished before a kill point ({kills} kills)"
    assert "DeepSpeed ZeRO-3 engine" in " ".join(out_text.split()) and "[dpo] resumed from ckpt-" in out_text
    resumed = next(out.iterdir())
    a, b = _final_weights(deepspeed_clean_run), _final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for rel in ("stages/00-sft/metrics.jsonl", "stages/01-grpo/rollouts.jsonl", "stages/02-verify/pairs.jsonl",
                "stages/03-dpo/metrics.jsonl"):
        assert _records(deepspeed_clean_run / rel) == _records(resumed / rel), rel


def test_a_killed_bf16_run_over_fp32_masters_resumes_exactly(tmp_path: Path):
    """bf16 compute over float32 master weights (model.dtype, model.master_dtype): checkpoints hold the float32
    masters, so a run killed mid-GRPO (old log-probs recomputed by the trainer) and mid-DPO ends bit-identical to
    the uninterrupted one."""
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    mixed = ["model.dtype=bfloat16", "model.master_dtype=float32", "eval.heldout=[]", "grpo.eval_every=null",
             "grpo.max_steps=2"]
    clean = _finish(_start(["cfg.yaml", "output_dir=clean", *mixed], tmp_path))
    out = tmp_path / "killed"
    proc, kills = _kill_and_resume(["cfg.yaml", f"output_dir={out}", *mixed], tmp_path, out, (
        "*/stages/01-grpo/checkpoints/ckpt-000001", "*/stages/03-dpo/reference_logps.json"))
    resumed = _finish(proc)
    assert kills == 2, f"the run finished before a kill point ({kills} kills)"
    a, b = _final_weights(tmp_path / clean), _final_weights(resumed)
    assert {str(t.dtype) for t in a.values()} == {"torch.float32"}  # the masters, not their bf16 rounding
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for rel in ("stages/01-grpo/metrics.jsonl", "stages/01-grpo/rollouts.jsonl", "stages/03-dpo/metrics.jsonl"):
        assert _records(tmp_path / clean / rel) == _records(resumed / rel), rel
    grpo_rows = [row for row in _records(resumed / "stages/01-grpo/metrics.jsonl") if row.get("kind") == "grpo"]
    assert grpo_rows and {row["old_logprobs"] for row in grpo_rows} == {"trainer"}
