"""Media decoding: video frames sampled by fps/max_frames and resized with Qwen's smart-resize rules
(PyAV, no torchvision), images (PIL, GIF first frame), and an on-disk cache of decoded, resized frames.

The sampling rules follow qwen-vl-utils 0.0.x ``vision_process.py`` (``smart_resize``, ``smart_nframes``:
frame count by fps clamped to [min_frames, max_frames], a multiple of FRAME_FACTOR = 2, evenly spaced
over the clip). Differences, on purpose: frames are picked by timestamp (nearest decoded frame to each
evenly spaced time), not by index, so files whose headers lie about the frame count or duration
(``tree.avi`` claims 444 frames, 68 decode) or whose timestamps start late still give their real frames.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veripo.errors import UnusableSample

log = logging.getLogger(__name__)

IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # qwen-vl-utils' default budget for all frames together
FRAME_FACTOR = 2
IMAGE_PIXEL_CAP = 8192 * 8192  # refuse images whose header claims more pixels (below PIL's own bomb limit)
SEEK_GAP_S = 3.0  # seek instead of decoding through when the next sampled frame is this far ahead
CACHE_VERSION = 1

# Counters for tests and benchmarks: how many files were really decoded vs served from the cache.
stats = {"video_decodes": 0, "cache_hits": 0, "frames_decoded": 0}


class MediaError(UnusableSample, RuntimeError):
    """A media file that cannot be used: the message names the file and what failed."""


@dataclass
class VideoFrames:
    """Sampled frames of one video.

    frames: (T, H, W, 3) uint8 RGB, H and W multiples of the resize factor (28 by default), T even and
        >= min_frames.
    timestamps: seconds from the first frame, one per frame.
    fps: frames per second of the sampled sequence (what Qwen2.5-VL's ``second_per_grid_ts`` needs).
    """

    frames: np.ndarray
    timestamps: list[float]
    fps: float


def _round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def _ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def _floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, aspect ratio kept, pixels within [min, max].

    Same rule as qwen-vl-utils ``smart_resize``; raises ValueError for an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width):.1f} for {height}x{width}")
    h_bar = max(factor, _round_by(height, factor))
    w_bar = max(factor, _round_by(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, _floor_by(height / beta, factor))
        w_bar = max(factor, _floor_by(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil_by(height * beta, factor)
        w_bar = _ceil_by(width * beta, factor)
    return h_bar, w_bar


def count_sampled_frames(duration_s: float, total_frames: int, *, fps: float, min_frames: int,
                         max_frames: int) -> int:
    """qwen-vl-utils ``smart_nframes``: duration * fps clamped to [min, max] and to the frames that
    exist, rounded down to an even number; at least FRAME_FACTOR (a 1-frame clip is padded later)."""
    lo = _ceil_by(min_frames, FRAME_FACTOR)
    hi = max(FRAME_FACTOR, _floor_by(max_frames, FRAME_FACTOR))
    n = min(max(duration_s * fps, lo), hi, max(total_frames, 1))
    return max(FRAME_FACTOR, _floor_by(n, FRAME_FACTOR))


def _resize_rgb(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[0] == h and rgb.shape[1] == w:
        return np.ascontiguousarray(rgb)
    # Bicubic with antialiasing, like torchvision's resize in qwen-vl-utils.
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))


def load_image(path: str | os.PathLike[str], *, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
               pixel_cap: int = IMAGE_PIXEL_CAP, factor: int = IMAGE_FACTOR) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB resized by :func:`smart_resize` to sides that are multiples of ``factor``
    (the model's patch size x merge size: 28 for Qwen2.5-VL, 32 for Qwen3-VL); a GIF gives its first frame.

    Raises MediaError for a missing or unreadable file and for one above ``pixel_cap`` pixels (checked from
    the header, before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            if im.width * im.height > pixel_cap:
                raise MediaError(f"{path}: image is {im.width}x{im.height} = {im.width * im.height} pixels, "
                                 f"above the cap of {pixel_cap}; refusing to decode it")
            im.seek(0)
            rgb = np.asarray(im.convert("RGB"))
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"{path}: cannot read image: {e}") from None
    try:
        h, w = smart_resize(rgb.shape[0], rgb.shape[1], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from None
    return _resize_rgb(rgb, h, w)


# ---------------------------------------------------------------------------------------------- video


def video_frame_budget(nframes: int, min_pixels: int, max_pixels: int | None) -> int:
    """Per-frame pixel budget of a video of ``nframes`` frames (what its frames are resized to at most)."""
    # qwen-vl-utils fetch_video: per-frame budget from a total budget, never below min_pixels * 1.05.
    budget = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / nframes * FRAME_FACTOR), int(min_pixels * 1.05))
    return int(min(max_pixels, budget)) if max_pixels is not None else int(budget)


def _probe(container, stream) -> tuple[float, int, float]:
    """(duration_s, claimed_frames, nominal_fps) from the headers, taking the longest duration claimed:
    a too-long claim is corrected after decoding, a too-short one would hide real frames."""
    rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 0.0
    durations = []
    if stream.duration and stream.time_base:
        durations.append(float(stream.duration * stream.time_base))
    if container.duration:
        durations.append(container.duration / 1e6)
    frames = int(stream.frames or 0)
    if frames and rate:
        durations.append(frames / rate)
    duration = max(durations, default=0.0)
    if not frames and duration and rate:
        frames = round(duration * rate)
    return duration, frames, rate or 25.0


@dataclass
class _Decoded:
    frames: list[np.ndarray]
    times: list[float]
    last_time: float  # time of the last frame decoded (-1 when none)
    count: int  # frames decoded
    exact_count: bool  # no seek happened, so `count` is the number of frames up to `last_time`


def _decode_at(container, path: Path, targets: list[float] | None, start: float | None, frame_dt: float) -> _Decoded:
    """Decode the frames nearest to each target time (seconds from the first frame); all frames when
    ``targets`` is None.

    Only kept frames are converted to RGB; a gap of more than SEEK_GAP_S before the next target is
    skipped with a keyframe seek. A decoding error mid-file (a truncated file) ends the stream there.
    """
    import av

    out = _Decoded(frames=[], times=[], last_time=-1.0, count=0, exact_count=True)

    def keep(t: float, frame) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        turns = round(getattr(frame, "rotation", 0) / 90) % 4  # display matrix: degrees counter-clockwise
        out.frames.append(np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb)  # phone portrait clips
        out.times.append(t)

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    t0, ti, pos = start, 0, -1.0
    prev = None  # (time, frame): the last frame decoded before the current one
    frames_iter = container.decode(stream)
    seeking, sought = True, -1  # seek at most once per target; stop when seeks land behind us
    while targets is None or ti < len(targets):
        if (seeking and targets is not None and t0 is not None and prev is not None and stream.time_base
                and sought < ti and targets[ti] - pos > SEEK_GAP_S):
            container.seek(int((t0 + targets[ti] - 0.5) / stream.time_base), stream=stream, backward=True)
            frames_iter = container.decode(stream)
            prev, out.exact_count, sought, landed = None, False, ti, False
        try:
            frame = next(frames_iter, None)
        except av.error.FFmpegError as e:
            log.warning("%s: decoding stopped after %d frames: %s", path, out.count, e)
            break
        if frame is None:
            break
        out.count += 1
        stats["frames_decoded"] += 1
        if t0 is None:
            t0 = frame.time if frame.time is not None else 0.0
        # A stream without timestamps (a raw .h264 file) is timed by frame count at the nominal rate.
        t = frame.time - t0 if frame.time is not None else (out.count - 1) * frame_dt
        if sought == ti and not landed:
            landed = True
            seeking = t > pos  # the keyframes are further apart than our gaps: decode straight through
        if t <= pos:  # at or before where we were (a seek landed early, or a repeated timestamp)
            continue
        pos = out.last_time = t
        if targets is None:
            keep(t, frame)
            continue
        while ti < len(targets) and t >= targets[ti]:
            # `frame` is the first at or after target ti; the previous one may be nearer to it.
            use_prev = (prev is not None and targets[ti] - prev[0] < t - targets[ti]
                        and (not out.times or prev[0] > out.times[-1]))
            chosen_t, chosen = prev if use_prev else (t, frame)  # type: ignore[misc]
            if not out.times or chosen_t > out.times[-1]:
                keep(chosen_t, chosen)
            ti += 1  # a target nearer to an already kept frame is dropped: no repeated frames
        prev = (t, frame)
    if targets is not None and ti < len(targets) and prev is not None and (not out.times or prev[0] > out.times[-1]):
        keep(*prev)  # the stream ended before the last targets: its last frame counts
    return out


def _sample_targets(duration: float, n: int, frame_dt: float) -> list[float]:
    # Evenly spaced over [0, duration - one frame], like linspace(0, total_frames - 1, n) on indices.
    span = max(0.0, duration - frame_dt)
    if n == 1:
        return [0.0]
    return [span * i / (n - 1) for i in range(n)]


def decode_video(path: str | os.PathLike[str], *, fps: float = 2.0, max_frames: int = 16, min_frames: int = 2,
                 min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int | None = VIDEO_MAX_PIXELS,
                 factor: int = IMAGE_FACTOR) -> VideoFrames:
    """Decode and resize sampled frames without the cache; see :func:`load_video`."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            duration, claimed, rate = _probe(container, stream)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else None
            stats["video_decodes"] += 1
            n = count_sampled_frames(duration, claimed, fps=fps, min_frames=min_frames, max_frames=max_frames)
            targets = None if n >= claimed else _sample_targets(duration, n, 1.0 / rate)
            dec = _decode_at(container, path, targets, start, 1.0 / rate)
        if len(dec.frames) < n and dec.count:
            # The header promised more than the file holds (a lying frame count or duration, a truncated
            # file): sample again over what really decoded.
            real_duration = dec.last_time + 1.0 / rate
            real_frames = dec.count if dec.exact_count else max(1, round(real_duration * rate))
            n = count_sampled_frames(real_duration, real_frames, fps=fps, min_frames=min_frames, max_frames=max_frames)
            if len(dec.frames) < min(n, real_frames):
                targets = None if n >= real_frames else _sample_targets(real_duration, n, 1.0 / rate)
                with av.open(str(path)) as container:
                    dec = _decode_at(container, path, targets, start, 1.0 / rate)
        kept, times = dec.frames, dec.times
        if len(kept) > n:  # headers gave no usable length, so everything was decoded: sample by index now
            n = count_sampled_frames(dec.last_time + 1.0 / rate, len(kept), fps=fps, min_frames=min_frames,
                                     max_frames=max_frames)
            pick = np.linspace(0, len(kept) - 1, n).round().astype(int)
            kept, times = [kept[i] for i in pick], [times[i] for i in pick]
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{path}: cannot decode video: {e}") from None
    if not kept:
        raise MediaError(f"{path}: zero frames decoded (empty or truncated video)")
    # Pad to an even count, >= min_frames, by repeating the last frame (qwen-vl-utils pads the same way).
    want = max(_ceil_by(len(kept), FRAME_FACTOR), _ceil_by(min_frames, FRAME_FACTOR))
    while len(kept) < want:
        kept.append(kept[-1])
        times.append(times[-1])
    h0, w0 = kept[0].shape[:2]
    try:
        h, w = smart_resize(h0, w0, factor=factor, min_pixels=min_pixels,
                            max_pixels=video_frame_budget(len(kept), min_pixels, max_pixels))
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from None
    frames = np.stack([_resize_rgb(f, h, w) for f in kept])
    span = times[-1] - times[0]
    sample_fps = (len(set(times)) - 1) / span if span > 0 else float(fps)
    return VideoFrames(frames=frames, timestamps=[round(t, 6) for t in times], fps=float(sample_fps))


def cache_key(path: Path, **settings: object) -> str:
    """Key from the file's identity (absolute path, size, mtime) and the sampling settings."""
    st = path.stat()
    ident = f"v{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|" + "|".join(
        f"{k}={settings[k]}" for k in sorted(settings))
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _cache_read(file: Path) -> VideoFrames | None:
    try:
        with np.load(file) as z:
            return VideoFrames(frames=z["frames"], timestamps=[float(t) for t in z["timestamps"]],
                               fps=float(z["fps"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged cache entry is just a miss


def _cache_write(file: Path, video: VideoFrames) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, frames=video.frames, timestamps=np.asarray(video.timestamps, dtype=np.float64),
                     fps=np.float64(video.fps))
        os.replace(tmp, file)  # atomic: readers see the old state or the whole new file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_video(path: str | os.PathLike[str], *, fps: float = 2.0, max_frames: int = 16, min_frames: int = 2,
               min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int | None = VIDEO_MAX_PIXELS,
               cache_dir: str | os.PathLike[str] | None = None, factor: int = IMAGE_FACTOR) -> VideoFrames:
    """Sampled, resized frames of a video, from the on-disk cache when ``cache_dir`` has them.

    Frames: about ``fps`` per second, between ``min_frames`` and ``max_frames`` (an even count), each
    resized by :func:`smart_resize` to multiples of ``factor``. Raises MediaError naming the file for a missing, empty, truncated or
    undecodable video.
    """
    path = Path(path)
    settings = {"fps": fps, "max_frames": max_frames, "min_frames": min_frames, "min_pixels": min_pixels,
                "max_pixels": max_pixels, "factor": factor}
    if cache_dir is None:
        return decode_video(path, **settings)  # type: ignore[arg-type]
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    file = Path(cache_dir) / f"{cache_key(path, **settings)}.npz"
    if file.exists() and (hit := _cache_read(file)) is not None:
        stats["cache_hits"] += 1
        return hit
    video = decode_video(path, **settings)  # type: ignore[arg-type]
    _cache_write(file, video)
    return video
