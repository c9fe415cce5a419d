"""siammae.data.video: streaming decode, random access, truncated / empty / missing files, write_video."""

import types
import weakref

import av
import numpy as np
import pytest
from helpers import write_with_pyav
from PIL import Image

from siammae.data.synthetic import iter_synthetic_clip, make_synthetic_clip
from siammae.data.video import count_frames, open_video, read_frames, write_video
from siammae.errors import VideoError


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, _ = make_synthetic_clip(40, (64, 96), seed=3)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    assert write_video(path, frames, fps=25) == 40
    return path, frames


def test_write_video_round_trip(clip):
    path, frames = clip
    src = open_video(path)
    assert (src.width, src.height, src.num_frames, src.fps, src.is_folder) == (96, 64, 40, 25.0, False)
    decoded = list(src)
    assert [f.index for f in decoded] == list(range(40))
    assert [f.name for f in decoded] == [f"{i:05d}" for i in range(40)]
    err = [np.abs(d.rgb.astype(int) - f.astype(int)).mean() for d, f in zip(decoded, frames, strict=True)]
    assert max(err) < 12  # lossy h264 at crf 20 on a noisy texture; a wrong frame order would be ~40
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # atomic: no temp file left


def test_write_video_pads_odd_sizes_and_refuses_no_frames(tmp_path):
    frames, _ = make_synthetic_clip(3, (33, 45), seed=0)
    write_video(tmp_path / "odd.mp4", frames)
    src = open_video(tmp_path / "odd.mp4")
    assert (src.width, src.height) == (46, 34)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "none.mp4", [])
    assert not (tmp_path / "none.mp4").exists()


def test_random_access_equals_sequential_decode(clip):
    path, _ = clip
    sequential = [f.rgb for f in open_video(path)]
    wanted = [17, 0, 39, 5, 17, 6]
    for i, rgb in zip(wanted, read_frames(path, wanted), strict=True):
        np.testing.assert_array_equal(rgb, sequential[i])
    with pytest.raises(VideoError, match="ends before"):
        read_frames(path, [40])


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_iteration_streams_one_frame_at_a_time(clip, tmp_path, kind):
    path, frames = clip
    if kind == "folder":
        for i, f in enumerate(frames[:10]):
            Image.fromarray(f).save(tmp_path / f"{i:05d}.jpg")
        path = tmp_path
    it = iter(open_video(path))
    assert isinstance(it, types.GeneratorType)  # decoded on demand
    alive = []
    for frame in it:
        alive.append(weakref.ref(frame.rgb))
        del frame
        assert sum(r() is not None for r in alive) <= 1  # the source keeps no frame it has handed out
    assert len(alive) == (40 if kind == "video" else 10)


def test_folder_source_sorted_by_name(tmp_path):
    frames, _ = make_synthetic_clip(3, (20, 24), seed=0)
    for name, f in zip(["b_002", "a_010", "c_001"], frames, strict=True):
        Image.fromarray(f).save(tmp_path / f"{name}.png")
    (tmp_path / "readme.txt").write_text("not a frame")
    src = open_video(tmp_path)
    assert src.is_folder and src.num_frames == 3 and (src.width, src.height) == (24, 20)
    got = list(src)
    assert [f.name for f in got] == ["a_010", "b_002", "c_001"]
    np.testing.assert_array_equal(got[0].rgb, frames[1])  # png: lossless


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_truncated_file_error_says_where_it_stopped(tmp_path, container):
    frames = [f for f, _ in iter_synthetic_clip(30, (64, 96), seed=1)]
    full = tmp_path / f"full.{container}"
    # faststart puts the mp4 index first, as in downloads; mkv has no frame count, only a duration
    write_with_pyav(full, frames, **({"movflags": "faststart"} if container == "mp4" else {}))
    assert sum(1 for _ in open_video(full)) == 30
    cut = tmp_path / f"cut.{container}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(VideoError) as e:
        for f in open_video(cut):
            got.append(f)
    assert 0 < len(got) < 30
    assert f"cut.{container}: decoding stopped at frame {len(got)} of 30" in str(e.value)


def test_video_without_frames(tmp_path):
    for ext, message in [("mkv", "the file ends before its first frame"), ("mp4", "the file has no video stream")]:
        path = tmp_path / f"empty.{ext}"
        with av.open(str(path), "w") as c:  # a header, then no frame
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            c.start_encoding()
        with pytest.raises(VideoError, match=f"empty.{ext}: {message}"):
            list(open_video(path))


def test_bad_paths(tmp_path):
    with pytest.raises(VideoError, match="missing.mp4: no such file or folder"):
        open_video(tmp_path / "missing.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video")
    with pytest.raises(VideoError, match="text.mp4: cannot open video"):
        open_video(tmp_path / "text.mp4")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VideoError, match="not a video file or frame folder"):
        open_video(tmp_path / "notes.txt")
    (tmp_path / "frames").mkdir()
    with pytest.raises(VideoError, match="folder has no frames"):
        open_video(tmp_path / "frames")


def test_count_frames_without_a_container_count(tmp_path):
    frames = [f for f, _ in iter_synthetic_clip(12, (32, 32), seed=2)]
    write_with_pyav(tmp_path / "c.mkv", frames)
    assert open_video(tmp_path / "c.mkv").num_frames is None
    assert count_frames(tmp_path / "c.mkv") == 12


def test_real_clip(shared_data):
    path = shared_data / "cutie/example.mp4"
    src = open_video(path)
    assert (src.width, src.height, src.num_frames, src.fps) == (640, 480, 117, 25.0)
    sequential = {f.index: f.rgb for f in src if f.index in (0, 58, 116)}
    for i, rgb in zip((116, 0, 58), read_frames(path, [116, 0, 58]), strict=True):
        np.testing.assert_array_equal(rgb, sequential[i])
