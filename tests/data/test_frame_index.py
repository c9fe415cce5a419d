"""The frame index: every frame that decodes, found by its timestamp (variable frame rates, wrong header counts)."""

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from siammae.data import frame_index as FI
from siammae.data.video import read_frames
from siammae.errors import VideoError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TRAINING_CLIPS = sorted(SHARED.glob("train-videos/*.mp4")) + sorted(SHARED.glob("sam2/*.mp4"))
TRAINING_CLIPS += [SHARED / "cutie" / "example.mp4"] if (SHARED / "cutie" / "example.mp4").exists() else []


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMMAE_CACHE", str(tmp_path / "cache"))
    FI._MEMO.clear()
    yield tmp_path / "cache"
    FI._MEMO.clear()


def frame(t: int, h=48, w=64) -> np.ndarray:
    """A frame that says its number: a bright bar whose position is t (decodes recognisably after h264)."""
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[:, (t * 3) % w : (t * 3) % w + 3] = 230
    rgb[: (t % h) + 1, :2] = 200
    return rgb


def write_vfr(path: Path, n: int, gop: int = 5) -> None:
    """An h264 mp4 with irregular timestamps (1/1000 s time base, gaps of 20..90 ms) and a key frame every ``gop``."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"g": str(gop), "bf": "0", "crf": "10", "sc_threshold": "0"}  # key frames every gop only
        pts = 0
        for t in range(n):
            f = av.VideoFrame.from_ndarray(frame(t), format="rgb24")
            f.pts, f.time_base = pts, Fraction(1, 1000)
            pts += int(rng.integers(20, 90))
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def decode_all(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_variable_frame_rate_frames_are_the_decoded_ones(tmp_path):
    path = tmp_path / "vfr.mp4"
    write_vfr(path, 40)
    every = decode_all(path)
    index = FI.frame_index(path)
    assert len(index) == len(every) == 40 and index.seekable and len(index.keys) > 1
    asked = [39, 0, 17, 18, 5, 33, 17]
    for i, rgb in zip(asked, FI.read_indexed(path, asked), strict=True):
        assert np.array_equal(rgb, every[i]), i
    # read_frames (tracking's and the tests' random access) reads through the same index
    for i, rgb in zip(asked, read_frames(path, asked), strict=True):
        assert np.array_equal(rgb, every[i]), i


def test_the_index_is_cached_per_file_version(tmp_path, cache, monkeypatch):
    path = tmp_path / "vfr.mp4"
    write_vfr(path, 12)
    first = FI.frame_index(path)
    assert len(list((cache / "frame-index").glob("*.json"))) == 1
    FI._MEMO.clear()

    def no_build(p):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(FI, "build_index", no_build)
    assert FI.frame_index(path) == first  # read back from the cache
    FI._MEMO.clear()
    os.utime(path, ns=(1, 1))  # another version of the file: rebuilt
    with pytest.raises(AssertionError, match="rebuilt"):
        FI.frame_index(path)


def test_a_corrupt_cache_entry_is_rebuilt_and_an_unwritable_cache_is_no_error(tmp_path, cache, monkeypatch):
    path = tmp_path / "vfr.mp4"
    write_vfr(path, 8)
    FI.frame_index(path)
    entry = next((cache / "frame-index").glob("*.json"))
    entry.write_text('{"version": 1, "pts": "x"}')
    FI._MEMO.clear()
    assert len(FI.frame_index(path)) == 8
    FI._MEMO.clear()
    monkeypatch.setenv("SIAMMAE_CACHE", str(path))  # a file, not a folder: nothing can be cached there
    assert len(FI.frame_index(path)) == 8


def test_undecodable_files_say_why(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    with pytest.raises(VideoError, match=r"bad\.mp4: (cannot open video|no frame decodes)"):
        FI.frame_index(bad)
    path = tmp_path / "vfr.mp4"
    write_vfr(path, 6)
    with pytest.raises(VideoError, match=r"frame 6 asked but the video ends before it \(6 frames decode\)"):
        FI.read_indexed(path, [6])


def test_a_seek_that_lands_late_is_retried_from_an_earlier_key_frame(tmp_path, monkeypatch):
    """A demuxer that lands after the target (it happens on real VFR files) costs a second seek, not the frame."""
    import av

    path = tmp_path / "vfr.mp4"
    write_vfr(path, 30, gop=5)
    every = decode_all(path)
    index = FI.frame_index(path)
    assert index.keys == (0, 5, 10, 15, 20, 25)
    target = 12
    seeks = []

    class LateFirstSeek:  # the first seek goes two key frames too far
        def __init__(self, container):
            self.c = container

        def __getattr__(self, name):
            return getattr(self.c, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.c.close()

        def seek(self, offset, **kw):
            seeks.append(offset)
            if len(seeks) == 1:
                offset = index.pts[20]
            return self.c.seek(offset, **kw)

    class Av:
        error = av.error

        @staticmethod
        def open(p):
            return LateFirstSeek(av.open(p))

    monkeypatch.setattr(FI, "_av", lambda: Av)
    got = FI.read_indexed(path, [target, target + 1], index=index)
    assert np.array_equal(got[0], every[target]) and np.array_equal(got[1], every[target + 1])
    assert len(seeks) == 2  # landed late once, then found from the key frame before


@pytest.mark.skipif(not TRAINING_CLIPS, reason="../shared/data (real clips) is absent")
def test_every_shared_training_clip_gives_pairs():
    """The clips that failed before (a header count one too high, a failed seek) all give pairs; 0 bad videos."""
    from siammae.train.data import PairDataset, SampleKey

    dataset = PairDataset([str(p) for p in TRAINING_CLIPS], size=32, seed=0, gap=(4, 48), repeat=2)
    skipped = []
    for v in range(len(dataset)):
        sample = dataset[SampleKey(v, 0, v)]
        skipped += sample["skipped"]
        assert sample["f1"].shape == (2, 3, 32, 32)
    assert skipped == []
    # the last frame that decodes is readable, whatever the header says
    for path in TRAINING_CLIPS:
        index = FI.frame_index(path)
        (last,) = FI.read_indexed(path, [len(index) - 1])
        assert last.shape == (index.height, index.width, 3)
    pillow = FI.frame_index(SHARED / "train-videos" / "cotracker-pillow.mp4")
    assert (pillow.stated, len(pillow)) == (149, 147)
