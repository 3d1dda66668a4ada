"""Benchmark: batch scoring of 10,000 mixed completions (every problem type, math included).

    .venv/bin/python bench/bench_rewards.py [--n 10000] [--workers 2] [--profile veripo]

Prints items/s and the failure counts for each profile asked for. The completions are synthetic but shaped
like real ones: a few hundred words of thinking, then an answer that is right, wrong or oddly written.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

from veripo.data.records import Sample
from veripo.rewards import score_batch

_WORDS = ["let", "me", "think", "the", "video", "shows", "a", "person", "who", "moves", "left", "then", "right", "wait", "so", "the", "answer", "seems", "clear"]
_MATH = [("\\frac{1}{2}", "0.5"), ("2\\sqrt{2}", "\\sqrt{8}"), ("x^2+2x+1", "(x+1)^2"), ("24/7", "3.43"),
         ("\\pi", "3.14159"), ("12", "12.0")]  # fmt: skip


def make_batch(n: int, seed: int = 0) -> tuple[list[str], list[Sample]]:
    """``n`` (completion, sample) pairs cycling through all problem types."""
    rng = random.Random(seed)
    completions, samples = [], []
    for i in range(n):
        kind = ("multiple choice", "numerical", "OCR", "free-form", "regression", "math")[i % 6]
        thinking = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(50, 400)))
        if kind == "multiple choice":
            gold, pred = rng.choice("ABCD"), rng.choice(["A", "(B)", "$C$", "D. red", "b"])
            options = ["A. red", "B. blue", "C. green", "D. black"]
        elif kind in ("numerical", "regression"):
            gold, pred, options = str(rng.randint(1, 99)), f"{rng.uniform(0, 100):.2f}", []
        elif kind == "OCR":
            gold, pred, options = "STOP HERE 14", rng.choice(["STOP HERE 14", "stop her 14"]), []
        elif kind == "free-form":
            gold, options = "The person cracks an egg into the pan.", []
            pred = rng.choice(["An egg is cracked into the pan.", "cracking eggs", gold])
        else:
            gold, pred = rng.choice(_MATH)
            options = []
        completions.append(f"<think>{thinking}</think><answer>{pred}</answer>")
        samples.append(Sample(id=f"b{i}", problem="q", problem_type=kind, answer=gold, options=options))
    return completions, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="append", help="profile(s) to time (default: veripo, veripo-eval)")
    args = parser.parse_args()
    completions, samples = make_batch(args.n)
    for profile in args.profile or ["veripo", "veripo-eval"]:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        scores = score_batch(completions, samples, profile, workers=args.workers, progress=True)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        mean = sum(s["accuracy"] for s in scores) / len(scores)
        print(
            f"{profile}: {len(scores)} completions in {seconds:.1f} s with {args.workers} workers "
            f"({len(scores) / seconds:.0f}/s), {cpu:.1f} CPU-s in all processes; mean accuracy {mean:.3f}; "
            f"failures {dict(scores.failures)}"
        )


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the workers, startup included)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
