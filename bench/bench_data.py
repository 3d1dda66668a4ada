"""Data benchmarks: synthetic generation speed, and video decoding with vs. without the frame cache.

    .venv/bin/python bench/bench_data.py [--n 1000] [--repeats 3]

Prints: seconds to generate N synthetic samples (the demo's default data; target < 60 s for 1000), then
per-video time for raw decoding (PyAV seek/decode + smart-resize) vs. reading the npz cache, on the real
videos in ../shared/data (when present) and on synthetic videos, as a throughput table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from veripo.data import media
from veripo.data.synthetic import make_synthetic

SETTINGS = {"fps": 2.0, "max_frames": 16, "min_pixels": 4 * 28 * 28, "max_pixels": 256 * 28 * 28}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_generation(n: int, out: Path) -> Path:
    t = time.perf_counter()
    folder = make_synthetic(out / "syn", n=n, seed=0)
    dt = time.perf_counter() - t
    print(f"synthetic generation: {n} samples (video/image/text mix) in {dt:.2f} s = {n / dt:.0f} samples/s "
          f"({'OK' if dt < 60 else 'SLOW'}: target < 60 s for 1000)")
    return folder


def bench_decode(videos: list[Path], cache: Path, repeats: int) -> None:
    print(f"\n{'video':34} {'frames':>12} {'raw decode ms':>14} {'cache ms':>9} {'speed-up':>9}")
    raw_total = cached_total = 0.0
    for path in videos:
        video = media.load_video(path, cache_dir=cache, **SETTINGS)  # fills the cache
        raw = _best(lambda p=path: media.decode_video(p, **SETTINGS), repeats)
        hits = media.stats["cache_hits"]
        cached = _best(lambda p=path: media.load_video(p, cache_dir=cache, **SETTINGS), repeats)
        assert media.stats["cache_hits"] == hits + repeats
        raw_total, cached_total = raw_total + raw, cached_total + cached
        shape = "x".join(str(d) for d in video.frames.shape[:3])
        print(f"{path.name[:34]:34} {shape:>12} {raw * 1e3:14.1f} {cached * 1e3:9.2f} {raw / cached:8.0f}x")
    print(f"{'total':34} {'':>12} {raw_total * 1e3:14.1f} {cached_total * 1e3:9.2f} {raw_total / cached_total:8.0f}x"
          f"   ({len(videos) / raw_total:.1f} vs {len(videos) / cached_total:.0f} videos/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        folder = bench_generation(args.n, out)
        shared = ROOT.parent / "shared" / "data" / "real"
        real = sorted(shared.glob("*/*.mp4")) + sorted(shared.glob("*/*.avi"))
        if not real:
            print(f"(no real videos at {shared}; only synthetic ones are timed)")
        synthetic = sorted((folder / "media").glob("*.mp4"))[:5]
        bench_decode(real + synthetic, out / "cache", args.repeats)


if __name__ == "__main__":
    main()
