"""Decode workers (``eval.workers``): extra local processes decode whole batches of an evaluation with the weights
the parent hands them, so the predictions are the same bits as one process's; a dead worker's batches are decoded
by the parent; settings where a worker could not decode as the run does are refused by key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from veripo.config import ConfigError, MediaConfig, RunConfig, build
from veripo.data.loaders import load_samples
from veripo.data.synthetic import make_synthetic
from veripo.eval import evaluate
from veripo.eval.workers import DecodeWorkers
from veripo.models.inputs import SampleEncoder
from veripo.models.loading import load_policy
from veripo.models.vision_cache import VisionFeatureCache, use_vision_cache
from veripo.parallel import ParallelStrategy
from veripo.recipes.evaluation import check_eval_workers


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """The tiny model with its weights moved off the directory's (so a worker decoding with the directory's
    weights would be caught), 14 synthetic questions (one video missing) and an encoder."""
    root = tmp_path_factory.mktemp("workers")
    data = make_synthetic(root / "bench", n=14, seed=5, frames=(4, 6), size=56, kinds=("video", "image"))
    samples = load_samples(data).samples
    missing = next(s for s in samples if s.video is not None)
    Path(missing.video).unlink()
    policy = load_policy(tiny_model_dir)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    encode = SampleEncoder(policy.processor, MediaConfig(max_pixels=3136, min_pixels=3136), cache_dir=str(root / "cache"))
    return policy, samples, encode, root


def _predict(setup, out, workers=None):
    policy, samples, encode, _ = setup
    evaluate(policy.model, policy.tokenizer, encode, samples, out_dir=out, benchmark="bench", max_new_tokens=16,
             batch_size=3, judge=None, show_progress=False, workers=workers)
    lines = (out / "predictions.jsonl").read_text().splitlines()[1:]
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("vision_cache", [pytest.param(False, id="plain"),
                                          pytest.param(True, id="parent-with-vision-cache", marks=pytest.mark.slow)])
def test_workers_predict_the_same_bits_as_one_process(setup, tiny_model_dir, tmp_path, vision_cache, request):
    # with the run's visual feature cache the parent reuses tower outputs the workers compute afresh
    use_vision_cache(setup[0].model, VisionFeatureCache(2**28, 0, None) if vision_cache else None)
    request.addfinalizer(lambda: use_vision_cache(setup[0].model, None))
    alone = _predict(setup, tmp_path / "alone")
    if vision_cache:  # the second evaluation below is served from the cache
        assert _predict(setup, tmp_path / "cached") == alone
    assert len(alone) == 14 and sum(r["status"] != "ok" for r in alone) == 1
    with DecodeWorkers(2, tiny_model_dir, batch_size=3) as workers:
        shared = _predict(setup, tmp_path / "shared", workers)
        assert workers.batches_decoded >= 2  # 5 batches: the workers took batches 2, 3 and 5 or so
        # unchanged weights and encoder (a second benchmark after the same stage): nothing is sent again
        calls = []
        for worker in workers._workers:
            worker.call = lambda kind, payload, call=worker.call: calls.append(kind) or call(kind, payload)
        assert _predict(setup, tmp_path / "second", workers) == alone and calls == []
        # a second evaluation with changed weights: the workers take the new weights, not the old ones
        policy = setup[0]
        before = {k: v.clone() for k, v in policy.model.state_dict().items()}
        generator = torch.Generator().manual_seed(8)
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
        try:
            again = _predict(setup, tmp_path / "again", workers)
            again_alone = _predict(setup, tmp_path / "again-alone")
        finally:
            policy.model.load_state_dict(before)
    assert shared == alone  # every field, in the same order: responses, token counts, scores, missing media
    assert again == again_alone
    assert [r.get("output") for r in again] != [r.get("output") for r in alone]  # the weights did change the responses


def test_a_dead_worker_costs_time_not_predictions(setup, tiny_model_dir, tmp_path, caplog):
    alone = _predict(setup, tmp_path / "alone")
    with DecodeWorkers(2, tiny_model_dir, batch_size=3) as workers:
        workers._workers[0].process.kill()
        workers._workers[0].process.join()
        shared = _predict(setup, tmp_path / "shared", workers)
        assert workers.alive == 1
    assert shared == alone
    assert "decode worker 0 dropped" in caplog.text


@pytest.mark.slow  # a spawned worker loads torch
def test_an_encoder_that_cannot_be_pickled_leaves_the_work_to_this_process(setup, tiny_model_dir, tmp_path, caplog):
    policy, samples, encode, _ = setup
    alone = _predict(setup, tmp_path / "alone")
    with DecodeWorkers(1, tiny_model_dir, batch_size=3) as workers:
        evaluate(policy.model, policy.tokenizer, lambda sample: encode(sample), samples, out_dir=tmp_path / "lambda",
                 benchmark="bench", max_new_tokens=16, batch_size=3, judge=None, show_progress=False, workers=workers)
        assert workers.alive == 0 and workers.batches_decoded == 0
    rows = [json.loads(line) for line in (tmp_path / "lambda" / "predictions.jsonl").read_text().splitlines()[1:]]
    assert rows == alone
    assert "the encoder cannot be sent to it" in caplog.text


def test_settings_a_worker_cannot_follow_are_refused_by_key():
    check_eval_workers(build(RunConfig, {"eval": {"workers": 2}}), ParallelStrategy())
    for changes, what in (({"lora": {"enabled": True}}, "lora.enabled"),
                          ({"model": {"dtype": "bfloat16"}}, "master weights")):
        cfg = build(RunConfig, {"eval": {"workers": 2}, **changes})
        with pytest.raises(ConfigError, match=f"'eval.workers'.*{what}"):
            check_eval_workers(cfg, ParallelStrategy(precision=_precision(cfg)))


def _precision(cfg):
    from veripo.parallel.precision import Precision

    return Precision.of(cfg.model)


@pytest.mark.slow  # about 7 s: a spawned worker loads torch
def test_veripo_eval_with_workers_writes_what_one_process_writes(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from veripo.cli.main import app

    data = make_synthetic(tmp_path / "heldout", n=6, seed=3, frames=(4, 6), size=56)
    rows = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--bench", str(data), "--out", str(out),
                                          "--max-new-tokens", "12", "--batch-size", "2", "--workers", str(workers)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        rows[workers] = (out / "heldout" / "predictions.jsonl").read_text().splitlines()[1:]
    assert len(rows[1]) == 6 and rows[2] == rows[1]
    refused = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--bench", str(data), "--out",
                                       str(tmp_path / "gpu"), "--device", "cuda", "--workers", "2"])
    assert refused.exit_code == 2 and "--workers 2 works in one CPU process" in refused.output
