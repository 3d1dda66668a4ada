"""Held-out evaluation with decode workers (``eval.workers``) against one process, timed in one run.

The demo's held-out setting (videos of 56 x 56 px, up to 8 frames at 2 fps, brief chains, its three video
tasks; greedy, up to 96 new tokens, 64 questions per batch, or each of ``--batch-size``) on the tiny model
(``build_tiny``, seed 0, or ``--model DIR``: a trained checkpoint's predictions are the demo's), one torch
thread per process. Each setting evaluates the same items ``--repeats`` times into a
fresh folder with the same weights and the last pass is timed, as in a run, whose evaluations after the first
find the prompt encodings and the workers already loaded; the workers are started (and load the model) before
the timing, as a run starts them before its first stage. Prints wall seconds, items per second, the speed-up
over the first setting (one process, the first batch size) and whether every prediction equals its.

    .venv/bin/python bench/bench_eval_workers.py               # 256 videos, 1 and 2 processes
    .venv/bin/python bench/bench_eval_workers.py --batch-size 32 64 --workers 1 --model RUN/stages/07-*/checkpoints/ckpt-N
    .venv/bin/python bench/bench_eval_workers.py --items 8     # seconds (the test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_TASKS = ("appeared_first", "colour_change", "count")  # the demo's video tasks (configs/demo.yaml)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=256, help="held-out videos (default 256)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts to time (1 first)")
    parser.add_argument("--repeats", type=int, default=2, help="evaluations per setting; the last is timed")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64],
                        help="questions per batch (the demo's 64); several: each with every process count")
    parser.add_argument("--model", type=Path, default=None, help="a model directory (default: the tiny model)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if min(args.items, args.repeats, *args.batch_size) < 1 or not args.workers or args.workers[0] != 1 or min(args.workers) < 1:
        parser.error("--items, --repeats and --batch-size must be >= 1 and --workers must start with 1")
    with tempfile.TemporaryDirectory() as scratch:
        return run(args, args.work or Path(scratch))


def run(args: argparse.Namespace, work: Path) -> int:
    import torch

    from veripo.config import MediaConfig
    from veripo.data.loaders import load_samples
    from veripo.data.synthetic import make_synthetic
    from veripo.models import build_tiny, load_policy
    from veripo.models.inputs import SampleEncoder

    torch.set_num_threads(1)
    model_dir = args.model or build_tiny(work / "model", "tiny", seed=0)
    data = make_synthetic(work / "heldout", n=args.items, seed=1000, kinds=("video",), size=56, chain="brief",
                          tasks=DEMO_TASKS)
    samples = load_samples(data).samples
    policy = load_policy(model_dir)
    encode = SampleEncoder(policy.processor, MediaConfig(fps=2.0, max_frames=8, min_pixels=3136, max_pixels=3136),
                           cache_dir=str(work / "frames"))
    for sample in samples:  # decode and patchify every video once, untimed: the frame cache is warm for all
        encode(sample)
    results, reference = [], None
    for batch_size in args.batch_size:
        for n in args.workers:
            wall, by_workers, rows = timed_evaluation(args, model_dir, policy, encode, samples, work, batch_size, n)
            reference = rows if reference is None else reference
            results.append({"processes": n, "batch_size": batch_size, "wall_s": round(wall, 2),
                            "items_per_s": round(len(samples) / wall, 2),
                            "speedup": round(results[0]["wall_s"] / wall, 2) if results else 1.0,
                            "same_predictions": rows == reference, "batches_by_workers": by_workers})
    print(f"held-out evaluation, {len(samples)} videos, tiny model, one torch thread per process (last of "
          f"{args.repeats} passes; speed-up and predictions against the first row):")
    print(f"{'batch':>5}  {'processes':>9}  {'wall s':>7}  {'items/s':>7}  {'speed-up':>8}  same predictions")
    for r in results:
        print(f"{r['batch_size']:>5}  {r['processes']:>9}  {r['wall_s']:>7.2f}  {r['items_per_s']:>7.2f}  "
              f"{r['speedup']:>7.2f}x  {'yes' if r['same_predictions'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"items": len(samples), "settings": results}, indent=2))
    return 0 if all(r["same_predictions"] for r in results) else 1


def timed_evaluation(args, model_dir, policy, encode, samples, work: Path, batch_size: int, n: int):
    """Evaluate ``samples`` ``args.repeats`` times in ``n`` processes; the last pass's wall seconds, the batches
    the workers decoded and the predictions."""
    from veripo.eval import evaluate
    from veripo.eval.workers import DecodeWorkers

    workers = DecodeWorkers(n - 1, model_dir, batch_size=batch_size) if n > 1 else None
    try:
        if workers is not None:
            workers.begin(policy.model, encode)  # wait for them to load, untimed
        for repeat in range(args.repeats):
            out = work / f"eval-b{batch_size}-{n}-{repeat}"
            started = time.perf_counter()
            evaluate(policy.model, policy.tokenizer, encode, samples, out_dir=out, benchmark="heldout",
                     profile="veripo", max_new_tokens=96, batch_size=batch_size, judge=None, show_progress=False,
                     workers=workers)
            wall = time.perf_counter() - started
        by_workers = workers.batches_decoded if workers is not None else 0
    finally:
        if workers is not None:
            workers.close()
    rows = [json.loads(line).get("output") for line in (out / "predictions.jsonl").read_text().splitlines()[1:]]
    return wall, by_workers, rows


if __name__ == "__main__":
    raise SystemExit(main())
