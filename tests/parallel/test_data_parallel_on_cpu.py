"""Data parallel on CPU: two processes over gloo take the same optimizer steps as one process.

SFT, GRPO and DPO stages run once in one process and once under ``torch.distributed.run`` with two
processes (same config, seed and global batch). Every stage's final weights must agree to 1e-5 (sums of
per-question gradients round differently, nothing more), and rank 0's ``rollouts.jsonl`` must equal the
single process's: the same texts and tokens in the same order, which holds only if sampling seeds do not
depend on the rank and the gathered groups come back in question order. The data mixes text, image and
video questions and GRPO gets 3 questions (rank 0 gets two, rank 1 one), so one rank's share of a step
can miss the vision tower entirely (``sum_gradients`` must then add zeros); SFT sees text only, so no rank
reaches the vision tower, and with weight decay on it must keep ``grad=None`` as in one process.

Why 1e-5 and a smaller DPO learning rate: AdamW's first steps move a weight by about ``lr * g / (|g| + eps)``,
so a coordinate whose gradient cancels to rounding noise (DPO's chosen and rejected responses share the
prompt and their first tokens) moves by up to ``lr`` in a direction set by the summation order. The
difference between one and two processes is therefore a fraction of ``lr``; DPO, the worst conditioned,
runs at lr 1e-4 (largest difference measured: 4e-6; 1.2e-5 at lr 1e-3), and so does GRPO (1.3e-5 at lr
1e-3), SFT at 1e-3 (2e-6). The logged gradient norms, where no optimizer amplifies anything, agree to 1e-4
relative. GRPO's rewards include ``digit_share`` (registered by dp_worker.py), the share of digits in a
response: an untrained model never earns accuracy or format rewards, so without it every advantage would be
zero and GRPO's steps would be weight decay alone.

Every training stage is followed by the held-out evaluation: each rank decodes its share of the 7 items
(rank 0 four, rank 1 three, one of them with a broken video) and rank 0 writes all rows; the rows must
equal the single process's.

A third run, two processes with ``distributed.shard_optimizer`` (ZeRO stage 1: each rank keeps the AdamW
state of its share of the parameters), must match the one-process run the same way, and the optimizer state
it checkpoints (gathered on rank 0) must equal the one-process AdamW state, so a sharded run resumes. A
fourth, two processes with ``distributed.shard_weights`` (FSDP2: each rank keeps half of every decoder
layer's weights, gradients and AdamW state), must match it the same way too: the ranks' uneven shares
(GRPO 2 + 1 questions, SFT 3 + 2 samples, DPO 2 + 1 questions) only work if they run in lockstep. A fifth,
four processes with hybrid sharding (``distributed.shard_group_size: 2``: two replicas, each sharding the
layers over two ranks) and ``shard_optimizer`` (the whole parameters' AdamW state split over the four ranks),
must match it as well; there GRPO's third question leaves rank 3 with no work at all.

DeepSpeed ZeRO-3 (``distributed.deepspeed_zero3``: every parameter, the vision tower included, partitioned by
DeepSpeed's engine) steps every parameter in every step, so a parameter no gradient reached still gets weight
decay, which one process skips (the text-only SFT stage above would shrink the vision tower by 7.5e-4). Its
run and its one-process reference therefore train on questions that all have an image or a video, SFT
included: then every step reaches every parameter and the two must match the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from veripo.data.jsonl import JsonlWriter, read_jsonl
from veripo.data.loaders import load_samples
from veripo.data.records import Pair, reference_completion
from veripo.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("dp_worker.py")
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
STAGES = ("00-sft", "01-grpo", "02-dpo")
# --standalone: the rendezvous picks a free local port itself (no race with a port chosen beforehand)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

# the run settings every data-parallel test's config starts with (also tests/parallel/test_balanced_ranks_on_cpu.py)
COMMON = """\
seed: 0
output_dir: {out}
model: {{build_tiny: tiny, device: cpu}}
media: {{max_frames: 4, max_pixels: 3136, cache_dir: {cache}}}
rollout: {{num_generations: 4, temperature: 1.0, max_new_tokens: 12}}
rewards: {{extra: [digit_share]}}  # registered by dp_worker.py
data:
  - {{path: {data}}}
"""
CONFIG = "name: dp\n" + COMMON + """\
sft: {{lr: 1.0e-3, batch_size: 5, max_steps: 2, weight_decay: 0.5}}
grpo: {{lr: 1.0e-4, rollout_batch_size: 3, global_batch_size: 6, max_steps: 2, weight_decay: 0.1}}
dpo: {{lr: 1.0e-4, global_batch_size: 3, epochs: 1, beta: 0.1}}
eval: {{max_new_tokens: 12, batch_size: 1, heldout: [{{path: {heldout}, name: heldout}}]}}
stages:
  - {{name: sft, kind: sft, data: [{{path: {text_data}}}]}}
  - {{name: grpo, kind: grpo}}
  - {{name: dpo, kind: dpo}}
distributed: {{shard_optimizer: {zero}, shard_weights: {fsdp}, shard_group_size: {group}, deepspeed_zero3: {ds}}}
"""
# name: (processes, sharding): none, "zero" (distributed.shard_optimizer), "fsdp" (distributed.shard_weights)
# or "hsdp" (shard_weights with shard_group_size 2, and shard_optimizer: ZeRO-1 for the whole parameters)
RUNS = {"one": (1, None), "two": (2, None), "two-zero": (2, "zero"), "two-fsdp": (2, "fsdp"), "four-hsdp": (4, "hsdp")}
MULTI = [name for name, (processes, _) in RUNS.items() if processes > 1]
# DeepSpeed ZeRO-3 steps every parameter, so it matches one process only where every optimizer step reaches
# every parameter: these two runs train on questions that all have an image or a video, SFT included.
DEEPSPEED_RUNS = {"one-media": (1, None), "two-deepspeed": (2, "deepspeed")}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _launch(root: Path, name: str, pairs: Path, data: Path, sft_data: Path) -> tuple[subprocess.Popen, Path]:
    processes, shard = {**RUNS, **DEEPSPEED_RUNS}[name]
    config = root / f"{name}.yaml"
    config.write_text(CONFIG.format(out=root / name, data=data, text_data=sft_data, cache=root / "media-cache",
                                    heldout=root / "heldout", zero=str(shard in ("zero", "hsdp")).lower(),
                                    fsdp=str(shard in ("fsdp", "hsdp")).lower(),
                                    group=2 if shard == "hsdp" else "null", ds=str(shard == "deepspeed").lower()))
    result = root / f"{name}.result"
    worker = [str(WORKER), "run", str(config), str(pairs), str(result)]
    if processes == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [*TORCHRUN, "--nproc_per_node", str(processes), *worker]
    with open(root / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=root), result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories of the one-process and the two-process run (launched side by side)."""
    root = tmp_path_factory.mktemp("dp")
    data = make_synthetic(root / "data", n=10, seed=11, kinds=("text", "image", "video"), size=56, frames=(4, 4))
    make_synthetic(root / "text", n=10, seed=12, kinds=("text",))  # SFT never reaches the vision tower
    heldout = make_synthetic(root / "heldout", n=7, seed=13, kinds=("text", "image", "video"), size=56, frames=(4, 4))
    (heldout / "media" / "000005.mp4").write_bytes(b"not a video")  # item 5, rank 1's: a missing_media row
    pairs = root / "pairs.jsonl"
    samples = load_samples(data).samples
    with JsonlWriter(pairs) as w:  # chosen: the reference chain; rejected: another question's chain
        for s, other in zip(samples[:6], samples[1:7]):
            w.write(Pair(id=f"{s.id}/p", sample_id=s.id, pair_type="consistency", chosen=reference_completion(s),
                         rejected=reference_completion(other), reasons=["test"]))
    media = make_synthetic(root / "media", n=10, seed=11, kinds=("image", "video"), size=56, frames=(4, 4))
    media_pairs = root / "media-pairs.jsonl"
    media_samples = load_samples(media).samples
    with JsonlWriter(media_pairs) as w:
        for s, other in zip(media_samples[:6], media_samples[1:7]):
            w.write(Pair(id=f"{s.id}/p", sample_id=s.id, pair_type="consistency", chosen=reference_completion(s),
                         rejected=reference_completion(other), reasons=["test"]))
    launched = {name: _launch(root, name, pairs, data, root / "text") for name in RUNS}
    launched.update({name: _launch(root, name, media_pairs, media, media) for name in DEEPSPEED_RUNS})
    start = time.monotonic()
    out = {}
    try:
        for name, (proc, result) in launched.items():
            rc = proc.wait(timeout=600)
            log = (root / f"{name}.log").read_text()
            assert rc == 0, f"{name}-process run failed (exit {rc}):\n{log[-4000:]}"
            out[name] = Path(result.read_text())
    finally:
        for proc, _ in launched.values():
            if proc.poll() is None:  # a failed or hung run: torchrun passes SIGTERM on to its workers
                proc.terminate()
                proc.wait(timeout=30)
    print(f"one- and multi-process runs (plain, ZeRO-1, FSDP2, HSDP, DeepSpeed) finished in "
          f"{time.monotonic() - start:.1f}s")
    return out


def _final_weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from veripo.recipes.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(stage_dir)
    assert ckpt is not None, f"{stage_dir}: no checkpoint"
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(ckpt.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def assert_same_final_weights(expected_dir: Path, found_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights of two runs of a stage match to 1e-5 (the summation order of the ranks' gradients may
    differ, nothing more); returns the expected ones."""
    expected, found = _final_weights(expected_dir), _final_weights(found_dir)
    assert expected.keys() == found.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{found_dir.name} {name}: {m}")
    return expected


@pytest.mark.parametrize("two_run", MULTI)
@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_reach_the_same_weights_as_one(runs, stage, two_run):
    one = assert_same_final_weights(runs["one"] / "stages" / stage, runs[two_run] / "stages" / stage)
    before = _weights_before(runs["one"], stage)
    moved = max(float((tensor - before[name]).abs().max()) for name, tensor in one.items())
    assert moved > 1e-4, f"{stage}: the stage moved no weight by more than {moved:.2g}: a 1e-5 match proves nothing"


def _weights_before(run_root: Path, stage: str) -> dict[str, torch.Tensor]:
    """The weights a stage started from: the previous stage's final ones, or the base model's."""
    from safetensors.torch import load_file

    index = STAGES.index(stage)
    if index > 0:
        return _final_weights(run_root / "stages" / STAGES[index - 1])
    return {k: v for f in sorted((run_root / "base-model").glob("*.safetensors")) for k, v in load_file(f).items()}


def test_rank_zero_writes_the_rollouts_one_process_writes(runs):
    one = read_jsonl(runs["one"] / "stages" / "01-grpo" / "rollouts.jsonl")
    two = read_jsonl(runs["two"] / "stages" / "01-grpo" / "rollouts.jsonl")
    assert len(one) == 3 * 4  # 3 questions x G=4, written once (by rank 0 only)
    assert [(r["id"], r["text"], r["token_ids"]) for r in two] == [(r["id"], r["text"], r["token_ids"]) for r in one]
    assert [r["reward"] for r in two] == [r["reward"] for r in one]
    assert [r["advantage"] for r in two] == pytest.approx([r["advantage"] for r in one], abs=1e-9)
    assert len({r["sample_id"] for r in one}) == 3
    # dp_worker's digit_share reward varies within every group: GRPO's steps follow real gradients
    for question in {r["sample_id"] for r in one}:
        assert max(abs(r["advantage"]) for r in one if r["sample_id"] == question) > 0.1, question


def test_every_rank_decodes_its_share_of_the_heldout_set(runs):
    """Rank r of N decoded items r, r + N, ... after every training stage (the worker logs what each rank
    decoded), and rank 0 wrote every item once: the rows the single process writes, the broken video
    included."""
    for run in MULTI:
        world = RUNS[run][0]
        for rank in range(world):
            decoded = (runs[run].parent.parent / f"{run}.eval-rank{rank}.log").read_text().split()
            assert decoded == [f"heldout:{i}" for i in range(rank, 7, world)] * len(STAGES), (run, rank)
    for stage in STAGES:
        def rows(run: str) -> dict[str, tuple]:
            found = read_jsonl(runs[run] / "stages" / stage / "eval" / "heldout" / "predictions.jsonl")
            assert len(found) == len({r["id"] for r in found}), f"{run} {stage}: an item written twice"
            return {r["id"]: (r["status"], r.get("output"), r.get("consistency")) for r in found}

        one = rows("one")
        assert len(one) == 7 and one["heldout:5"][0] == "missing_media"
        if stage == STAGES[0]:  # later stages start from weights 1e-6 apart: compare statuses only there
            for run in MULTI:
                assert rows(run) == one, run
        else:
            for run in MULTI:
                assert {k: v[0] for k, v in rows(run).items()} == {k: v[0] for k, v in one.items()}, run


@pytest.mark.parametrize("two_run", MULTI)
@pytest.mark.parametrize("stage", STAGES)
def test_logged_losses_match(runs, stage, two_run):
    one = read_jsonl(runs["one"] / "stages" / stage / "metrics.jsonl")
    two = read_jsonl(runs[two_run] / "stages" / stage / "metrics.jsonl")
    assert len(one) == len(two) == 2  # every stage takes 2 optimizer steps
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("sharded_run", ["two-zero", "two-fsdp", "four-hsdp"])
@pytest.mark.parametrize("stage", STAGES)
def test_sharded_optimizer_checkpoints_the_whole_adamw_state(runs, stage, sharded_run):
    """Rank 0 gathers every rank's share before saving (ZeRO-1: the AdamW state; FSDP2: weights too): the
    saved state equals one process's AdamW state (same parameter order, step counts and moments) and loads
    into a plain AdamW."""
    from veripo.recipes.checkpoint import latest_checkpoint

    def state(run: str) -> dict:
        ckpt = latest_checkpoint(runs[run] / "stages" / stage)
        return torch.load(ckpt / "optimizer.pt", weights_only=True)

    logs = {run: (runs[run].parent.parent / f"{run}.log").read_text() for run in MULTI}
    assert "AdamW state sharded over 2 ranks (ZeRO-1)" in logs["two-zero"]
    assert "decoder layers sharded over 2 ranks (FSDP2)" in logs["two-fsdp"]
    assert "decoder layers sharded over groups of 2 ranks, 2 replicas (HSDP" in logs["four-hsdp"]
    assert "AdamW state of the whole parameters sharded over 4 ranks" in " ".join(logs["four-hsdp"].split())
    assert "ZeRO-1" not in logs["two"] and "FSDP2" not in logs["two"] and "ZeRO-1" not in logs["two-fsdp"]
    _assert_same_adamw_state(state(sharded_run), state("one"), stage)


def _assert_same_adamw_state(gathered: dict, plain: dict, stage: str) -> None:
    """A checkpointed AdamW state gathered from several ranks equals one process's (same parameter order, step
    counts and moments) and loads into a plain AdamW."""
    assert sorted(gathered["state"]) == sorted(plain["state"]) and len(plain["state"]) > 0
    assert [g["params"] for g in gathered["param_groups"]] == [g["params"] for g in plain["param_groups"]]
    for index, moments in plain["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(gathered["state"][index][key], value, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{stage} parameter {index} {key}: {m}")
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in gathered["param_groups"][0]["params"]]
    torch.optim.AdamW(params).load_state_dict(gathered)  # the plain AdamW format: resumable without sharding


def test_sum_gradients_zero_fills_only_parameters_some_rank_reached(tmp_path):
    cmd = [*TORCHRUN, "--nproc_per_node", "2", str(WORKER), "sum-gradients"]
    done = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-8000:]}"


def test_sharded_optimizer_resumes_from_a_plain_adamw_state(tmp_path):
    cmd = [*TORCHRUN, "--nproc_per_node", "2", str(WORKER), "sharded-resume"]
    done = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-8000:]}"


def test_collective_timeout_outlasts_rank_zero_only_work(monkeypatch):
    from datetime import timedelta

    from veripo.parallel.base import collective_timeout

    monkeypatch.delenv("VERIPO_DIST_TIMEOUT_S", raising=False)
    assert collective_timeout() == timedelta(hours=6)  # torch's default, 30 minutes, cuts a long verify short
    monkeypatch.setenv("VERIPO_DIST_TIMEOUT_S", "90")
    assert collective_timeout() == timedelta(seconds=90)
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("VERIPO_DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="VERIPO_DIST_TIMEOUT_S"):
            collective_timeout()


@pytest.mark.parametrize(("processes", "extra"), [(2, []), (4, ["2", "zero"])], ids=["fsdp-2", "hsdp-2x2-zero1"])
def test_weight_sharding_keeps_ranks_in_lockstep_and_resumes_exactly(tmp_path, processes, extra):
    """FSDP2 on the tiny model with uneven work per rank (rank 1 pads its call and runs an idle call; with
    four ranks, ranks 2 and 3 only idle calls), a one-token response and gradient checkpointing: the same
    gradients, gradient norm and first AdamW step as one unsharded model, and a model resumed from the
    plain-format checkpoint takes exactly the step the uninterrupted one took. Hybrid sharding (2 replicas x 2
    ranks) with ZeRO-1 for the whole parameters: each rank holds half of the layers, the replicas hold equal
    shards, and each whole parameter's AdamW moments live on exactly one rank."""
    cmd = [*TORCHRUN, "--nproc_per_node", str(processes), str(WORKER), "fsdp-lockstep", str(tmp_path), *extra]
    done = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-8000:]}"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, False),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}, True),
    ({"ACCELERATE_USE_FSDP": "false"}, False),
])
def test_an_accelerate_fsdp2_launch_turns_weight_sharding_on(env, expected):
    from veripo.parallel.fsdp2 import weight_sharding_requested

    assert weight_sharding_requested(False, env) is expected
    assert weight_sharding_requested(True, env) is True


@pytest.mark.parametrize(("env", "message"), [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "fsdp_version must be 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "offload"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, "reshard"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
     "model.gradient_checkpointing"),
])
def test_accelerate_settings_veripo_cannot_honour_are_refused(env, message):
    from veripo.parallel.fsdp2 import weight_sharding_requested

    with pytest.raises(ValueError, match=message):
        weight_sharding_requested(False, env)


HSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
            "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "2", "PARALLELISM_CONFIG_DP_SHARD_SIZE": "8",
            "PARALLELISM_CONFIG_TP_SIZE": "1", "PARALLELISM_CONFIG_CP_SIZE": "1", "PARALLELISM_CONFIG_SP_SIZE": "1"}


@pytest.mark.parametrize(("configured", "env", "world", "expected"), [
    (None, {}, 8, 8),  # one flat group
    (4, {}, 8, 4),
    (None, HSDP_ENV, 16, 8),  # accelerate: dp_shard_size 8 x dp_replicate_size 2
    (8, HSDP_ENV, 16, 8),
])
def test_shard_group_size_comes_from_the_config_or_accelerate(configured, env, world, expected):
    from veripo.parallel.fsdp2 import shard_group_size

    assert shard_group_size(configured, env, world) == expected


@pytest.mark.parametrize(("configured", "env", "world", "message"), [
    (3, {}, 8, "does not divide the 8 processes"),
    (4, HSDP_ENV, 16, "says dp_shard_size 8"),
    (None, HSDP_ENV, 8, "= 16, but 8 processes"),
    (None, {**HSDP_ENV, "PARALLELISM_CONFIG_TP_SIZE": "2"}, 16, "tp_size=2"),
    (None, {**HSDP_ENV, "PARALLELISM_CONFIG_DP_SHARD_SIZE": "eight"}, 16, "not a whole number"),
])
def test_shard_groups_veripo_cannot_build_are_refused(configured, env, world, message):
    from veripo.parallel.fsdp2 import shard_group_size

    with pytest.raises(ValueError, match=message):
        shard_group_size(configured, env, world)


def test_a_parallelism_config_without_fsdp_is_refused():
    from veripo.parallel.fsdp2 import weight_sharding_requested

    with pytest.raises(ValueError, match="only with an FSDP2 config"):
        weight_sharding_requested(False, {"ACCELERATE_USE_PARALLELISM_CONFIG": "true"})


@pytest.mark.parametrize(("overrides", "message"), [
    (["distributed.shard_group_size=2"], "shard_group_size is set but the weights are not sharded"),
    (["distributed.shard_weights=true", "distributed.shard_group_size=3"], "does not divide the 4 processes"),
])
def test_a_shard_group_that_cannot_work_fails_before_the_model_loads(tmp_path, monkeypatch, overrides, message):
    """Checked first: with a 7B model, loading it only to fail would cost minutes on every rank."""
    import veripo.models
    from veripo.config import RunConfig, load
    from veripo.parallel import DistInfo, make_strategy

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the shard group was checked")

    monkeypatch.setattr(veripo.models, "load_policy", must_not_load)
    cfg = load(RunConfig, CONFIGS_DIR / "demo.yaml", overrides)
    with pytest.raises(ValueError, match=message):
        make_strategy(cfg.distributed, os.environ, DistInfo(rank=0, world=4))  # run() calls it first


@pytest.mark.parametrize("stage", STAGES)
def test_deepspeed_zero3_takes_the_steps_one_process_takes(runs, stage):
    """DeepSpeed ZeRO-3 on two processes (every weight, gradient and AdamW moment partitioned by DeepSpeed's
    engine; the vision tower run by every rank in every prompt pass): the same weights (1e-5), losses,
    gradient norms and checkpointed AdamW state as one process, on questions that all have media."""
    from veripo.recipes.checkpoint import latest_checkpoint

    log = (runs["two-deepspeed"].parent.parent / "two-deepspeed.log").read_text()
    printed = " ".join(log.split())  # rich wraps long lines
    assert "DeepSpeed ZeRO-3 engine: weights, gradients and AdamW state partitioned over 2 ranks" in printed
    one = _final_weights(runs["one-media"] / "stages" / stage)
    ds = _final_weights(runs["two-deepspeed"] / "stages" / stage)
    assert one.keys() == ds.keys()
    # Every element within 2e-5 (SFT, GRPO) or half DPO's lr (5e-5): the few coordinates whose gradient cancels
    # to rounding noise move by a fraction of lr in a direction set by the summation order, which differs
    # more here than in plain data parallel (ZeRO-3 reduces each backward pass separately). Measured: 25.6e-6
    # in DPO, at 2 of 1.3M elements (plain data parallel on the same questions: 4.2e-6). The rest must agree
    # as closely as plain data parallel does: at most 1 in 10,000 elements beyond 2e-6 (measured: 13).
    atol = 5e-5 if stage == "02-dpo" else 2e-5
    beyond = 0
    for name, tensor in one.items():
        torch.testing.assert_close(ds[name], tensor, rtol=1e-5, atol=atol, msg=lambda m: f"{stage} {name}: {m}")
        beyond += int(((ds[name] - tensor).abs() > 2e-6).sum())
    elements = sum(tensor.numel() for tensor in one.values())
    assert beyond <= elements // 10_000, f"{stage}: {beyond} of {elements} elements differ by more than 2e-6"
    before = _weights_before(runs["one-media"], stage)
    assert max(float((tensor - before[name]).abs().max()) for name, tensor in one.items()) > 1e-4
    one_rows = read_jsonl(runs["one-media"] / "stages" / stage / "metrics.jsonl")
    ds_rows = read_jsonl(runs["two-deepspeed"] / "stages" / stage / "metrics.jsonl")
    assert len(one_rows) == len(ds_rows) == 2
    for a, b in zip(one_rows, ds_rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-6)

    def state(run: str) -> dict:
        return torch.load(latest_checkpoint(runs[run] / "stages" / stage) / "optimizer.pt", weights_only=True)

    _assert_same_adamw_state(state("two-deepspeed"), state("one-media"), stage)  # resumable without DeepSpeed
    if stage == "01-grpo":  # sampled with all weights gathered: the texts one process samples
        one_rollouts = read_jsonl(runs["one-media"] / "stages" / stage / "rollouts.jsonl")
        ds_rollouts = read_jsonl(runs["two-deepspeed"] / "stages" / stage / "rollouts.jsonl")
        assert [(r["text"], r["advantage"]) for r in ds_rollouts] == [(r["text"], r["advantage"]) for r in one_rollouts]
        assert any(abs(r["advantage"]) > 0.1 for r in one_rollouts)
    for rank in range(2):
        decoded = (runs["two-deepspeed"].parent.parent / f"two-deepspeed.eval-rank{rank}.log").read_text().split()
        assert decoded == [f"heldout:{i}" for i in range(rank, 7, 2)] * len(STAGES)


def test_an_accelerate_deepspeed_launch_is_zero3_not_fsdp():
    from veripo.parallel.deepspeed_zero3 import deepspeed_zero3_settings
    from veripo.parallel.fsdp2 import weight_sharding_requested

    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    assert deepspeed_zero3_settings(False, env) == {"stage": 3}
    assert deepspeed_zero3_settings(True, {}) == {"stage": 3}
    assert deepspeed_zero3_settings(False, {}) is None
    assert weight_sharding_requested(False, env) is False
    with pytest.raises(ValueError, match="shards the weights itself"):
        weight_sharding_requested(True, env)


@pytest.mark.parametrize(("env", "message"), [
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "zero_stage must be 3 .got 2.*shard_optimizer"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
     "offload_optimizer_device must be none"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "nvme"},
     "offload_param_device must be none"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"},
     "gradient_accumulation_steps must be 1"),
])
def test_accelerate_deepspeed_settings_veripo_cannot_honour_are_refused(env, message):
    from veripo.parallel.deepspeed_zero3 import deepspeed_zero3_settings

    with pytest.raises(ValueError, match=message):
        deepspeed_zero3_settings(False, {"ACCELERATE_USE_DEEPSPEED": "true", **env})


@pytest.mark.parametrize(("config", "message"), [
    ({"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 1000}}, None),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "none"}}, "fp16": {"enabled": False}}, None),
    ({"zero_optimization": {"stage": 2}}, "stage must be 3"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer must be off"),
    ({"zero_optimization": {"stage": 3}, "optimizer": {"type": "Adam"}}, "'optimizer' must not be set"),
    ({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}, "'fp16' must not be set"),
    ({"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 8}, "gradient_accumulation_steps"),
    ({"train_batch_size": 8}, "'zero_optimization' section"),
    ("{not json", "cannot read it as JSON"),
])
def test_a_deepspeed_config_file_gives_its_zero3_section_or_a_reason(tmp_path, config, message):
    import json

    from veripo.parallel.deepspeed_zero3 import deepspeed_zero3_settings

    path = tmp_path / "ds.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}
    if message is None:
        assert deepspeed_zero3_settings(False, env) == config["zero_optimization"]
    else:
        with pytest.raises(ValueError, match=message) as error:
            deepspeed_zero3_settings(False, env)
        assert str(path) in str(error.value)


def test_deepspeed_with_veripo_sharding_is_refused(tmp_path, monkeypatch):
    """In the config (checked on load) and from an accelerate launch (checked before the model loads)."""
    import veripo.models
    from veripo.config import ConfigError, RunConfig, load
    from veripo.parallel import DistInfo, make_strategy

    with pytest.raises(ConfigError, match="deepspeed_zero3"):
        load(RunConfig, CONFIGS_DIR / "demo.yaml",
             ["distributed.deepspeed_zero3=true", "distributed.shard_weights=true"])

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(veripo.models, "load_policy", must_not_load)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    cfg = load(RunConfig, CONFIGS_DIR / "demo.yaml", ["distributed.shard_optimizer=true"])
    with pytest.raises(ValueError, match="ZeRO-3 partitions the weights and the optimizer state itself"):
        make_strategy(cfg.distributed, os.environ, DistInfo(rank=0, world=4))  # run() calls it first
