"""Media: smart-resize rules, frame sampling on real and awkward files, images, and the frame cache."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from veripo.data import media
from veripo.data.media import MediaError, load_image, load_video, smart_resize

SMALL = {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28}


def _write_video(path: Path, n: int, *, fps: int = 10, size: tuple[int, int] = (64, 48), fmt: str = "mp4",
                 codec: str = "mpeg4", first_pts: int = 0) -> None:
    """n frames whose brightness encodes their index (frame i has value 12 * i mod 240), pts starting at first_pts."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.time_base = Fraction(1, fps)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 12 * i % 240, np.uint8), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, fps)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _frame_index(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 12)


@pytest.mark.parametrize(("hw", "kw", "expected"), [
    ((480, 640), {}, (476, 644)),  # rounded to multiples of 28
    ((1000, 2000), {"max_pixels": 256 * 28 * 28}, (308, 616)),  # scaled down under the budget, floor
    ((20, 30), {"min_pixels": 4 * 28 * 28}, (56, 84)),  # scaled up to the minimum, ceil
    ((640, 360), {"max_pixels": 64 * 28 * 28}, (280, 168)),  # portrait keeps its orientation
])
def test_smart_resize_matches_hand_computed_values(hw, kw, expected) -> None:
    h, w = smart_resize(*hw, **kw)
    assert (h, w) == expected and h % 28 == 0 and w % 28 == 0


def test_smart_resize_refuses_extreme_aspect_ratio() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2100)


def test_every_real_video_decodes(shared_data: Path) -> None:
    videos = sorted((shared_data / "real").glob("*/*.mp4")) + sorted((shared_data / "real").glob("*/*.avi"))
    assert len(videos) == 6
    for path in videos:
        v = load_video(path, fps=2.0, max_frames=8, **SMALL)
        t, h, w, c = v.frames.shape
        assert v.frames.dtype == np.uint8 and c == 3 and h % 28 == 0 and w % 28 == 0
        assert 2 <= t <= 8 and t % 2 == 0 and len(v.timestamps) == t, path.name
        assert v.timestamps == sorted(v.timestamps) and v.timestamps[0] == 0.0
    portrait = load_video(shared_data / "real/videor1_samples/ytb_7nRmsEw7nsE.mp4", max_frames=8, **SMALL)
    assert portrait.frames.shape[1] > portrait.frames.shape[2]  # 360x640 portrait stays taller than wide
    assert portrait.timestamps[-1] > 35  # spread over the 44.8 s clip, not the first seconds


def test_tree_avi_gives_its_real_frames(shared_data: Path) -> None:
    path = shared_data / "real/media/tree.avi"  # header: 444 frames / 29.6 s; 68 frames decode
    every = load_video(path, fps=15, max_frames=400, **SMALL)
    assert len(every.frames) == 68 and len(set(every.timestamps)) == 68
    sampled = load_video(path, fps=2.0, max_frames=16, **SMALL)
    assert len(sampled.frames) == 16 and len(set(sampled.timestamps)) == 16
    assert sampled.timestamps[-1] > 25  # covers the whole clip


def test_late_start_timestamps_are_rebased(tmp_path: Path) -> None:
    path = tmp_path / "late.mp4"
    _write_video(path, 20, fps=10, first_pts=50)  # starts at 5 s
    v = load_video(path, fps=10, max_frames=20, **SMALL)
    assert len(v.frames) == 20 and v.timestamps[0] == 0.0 and v.timestamps[-1] == pytest.approx(1.9)
    assert [_frame_index(f) for f in v.frames] == list(range(20))
    half = load_video(path, fps=5, max_frames=20, **SMALL)
    assert [_frame_index(f) for f in half.frames] == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19]


def test_sampling_picks_evenly_spaced_frames_and_seeks_long_gaps(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    _write_video(path, 300, fps=10, size=(32, 32))  # 30 s; brightness wraps every 20 frames
    media.stats["frames_decoded"] = 0
    v = load_video(path, fps=2.0, max_frames=4, **SMALL)
    assert v.timestamps == pytest.approx([0.0, 9.9667, 19.9333, 29.9], abs=0.06)
    assert media.stats["frames_decoded"] < 300  # gaps of 10 s were seeked over, not decoded through


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "phone.mp4"  # stored 112x56 landscape, left half white, tagged "rotate 90 degrees ccw"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 112, 56, "yuv420p"
        s.set_display_rotation(90)
        frame = np.zeros((56, 112, 3), np.uint8)
        frame[:, :56] = 255
        for _ in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    v = load_video(path, min_pixels=0, max_pixels=112 * 56)
    assert v.frames.shape[1:] == (112, 56, 3)  # shown as portrait
    assert v.frames[0, 84, 28].min() > 200 and v.frames[0, 28, 28].max() < 50  # the left half went to the bottom


def test_raw_stream_without_length_or_timestamps_is_sampled_by_index(tmp_path: Path) -> None:
    path = tmp_path / "raw.h264"  # an elementary stream: no duration, no frame count, no timestamps
    _write_video(path, 30, fps=25, fmt="h264", codec="libx264")
    v = load_video(path, fps=25, max_frames=10, **SMALL)
    assert [_frame_index(f) for f in v.frames] == [i % 20 for i in (0, 3, 6, 10, 13, 16, 19, 23, 26, 29)]
    assert v.timestamps[-1] == pytest.approx(29 / 25)


def test_truncated_avi_header_lies_and_real_frames_come_back(tmp_path: Path) -> None:
    path = tmp_path / "cut.avi"
    _write_video(path, 40, fps=10, fmt="avi")
    data = path.read_bytes()  # tiny frames: the first ~half of the file is the AVI header
    for cut in (0.7, 0.9):  # 0.7 ends between packets; 0.9 ends inside one (a decoding error there)
        path.write_bytes(data[: int(len(data) * cut)])
        v = load_video(path, fps=10, max_frames=40, **SMALL)  # header still claims 40 frames
        assert 10 <= len(v.frames) < 40 and len(v.frames) % 2 == 0
        assert v.timestamps == sorted(set(v.timestamps))  # distinct real frames, in order
        assert [_frame_index(f) for f in v.frames[:8]] == list(range(8))  # (the last one may be damaged)


def test_truncated_and_empty_videos_raise_media_error(tmp_path: Path) -> None:
    src = tmp_path / "ok.mp4"
    _write_video(src, 10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[:300])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad in (cut, empty, tmp_path / "absent.mp4"):
        with pytest.raises(MediaError, match=bad.name):
            load_video(bad, **SMALL)


def test_cache_hit_avoids_decoding_and_file_changes_invalidate(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    _write_video(path, 20)
    cache = tmp_path / "cache"
    before = dict(media.stats)
    first = load_video(path, fps=4, cache_dir=cache, **SMALL)
    second = load_video(path, fps=4, cache_dir=cache, **SMALL)
    assert media.stats["video_decodes"] - before["video_decodes"] == 1
    assert media.stats["cache_hits"] - before["cache_hits"] == 1
    np.testing.assert_array_equal(first.frames, second.frames)
    assert first.timestamps == second.timestamps and first.fps == second.fps
    load_video(path, fps=2, cache_dir=cache, **SMALL)  # other sampling settings: another entry
    _write_video(path, 12)  # the file changes (size, mtime): the old entry no longer applies
    assert len(load_video(path, fps=10, max_frames=40, cache_dir=cache, **SMALL).frames) == 12
    assert media.stats["video_decodes"] - before["video_decodes"] == 3
    assert len(list(cache.glob("*.npz"))) == 3 and not list(cache.glob(".tmp-*"))


def test_images_png_gif_and_caps(tmp_path: Path, shared_data: Path) -> None:
    photo = load_image(shared_data / "real/media/photo_300x168.jpg", max_pixels=64 * 28 * 28)
    assert photo.dtype == np.uint8 and photo.shape[2] == 3 and photo.shape[0] % 28 == 0
    frames = [Image.new("RGB", (56, 56), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    gif = load_image(tmp_path / "a.gif", min_pixels=0, max_pixels=56 * 56)
    assert gif.shape == (56, 56, 3) and gif[28, 28, 0] > 200 and gif[28, 28, 2] < 50  # the first (red) frame
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    with pytest.raises(MediaError, match="above the cap"):
        load_image(tmp_path / "big.png", pixel_cap=1000 * 1000)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MediaError, match="junk.png: cannot read image"):
        load_image(tmp_path / "junk.png")
    Image.new("RGB", (2500, 10)).save(tmp_path / "strip.png")
    with pytest.raises(MediaError, match="strip.png: absolute aspect ratio"):
        load_image(tmp_path / "strip.png")
