"""What siammae-track runs (siammae/tracking/job.py): arguments checked before torch is imported, the command's
policy in the library (default output, real time chunk), and an MP4 on standard input (its index at the end)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from PIL import Image

from siammae.data.live import mp4_index_last, stdin_input
from siammae.data.masks import write_mask
from siammae.data.synthetic import make_synthetic_clip
from siammae.errors import VideoError
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model

EXAMPLE = ROOT.parent / "shared" / "data" / "cutie" / "example.mp4"


def env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", create_model("tiny"))


# ------------------------------------------------------------------------------------- checks before torch
CHECK = """
import sys
from siammae.cli.track import main
try:
    main({args!r})
except SystemExit as e:
    code = e.code
print("torch loaded:", "torch" in sys.modules, "status:", code)
"""


def run_check(args, cwd):
    code = CHECK.format(args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_bad_arguments_fail_before_torch_is_imported(tmp_path):
    write_mask(tmp_path / "m.png", np.pad(np.ones((8, 8), np.uint8), 12))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(frames / f"{i:05d}.jpg")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"x")
    (tmp_path / "blank.png").write_bytes(b"")
    cases = [
        (["missing.mp4", "--mask", "m.png"], "missing.mp4: no such file or folder"),
        (["frames", "--mask", "m.png", "--out", "full"], "--out full: output folder is not empty"),
        (["frames", "--mask", "nope.png"], "nope.png"),
        (["frames", "--mask", "blank.png"], "blank.png"),
        (["frames", "--mask", "m.png", "--ckpt", "dino-vitz16"], "'dino-vitz16' is neither a file nor a known"),
        (["frames", "--mask", "m.png", "--ckpt", "no.pt"], "no.pt: no such file"),
        (["frames", "--mask", "m.png", "--realtime"], "for live sources"),
        (["frames", "--mask", "m.png", "--overlay", "o.gif"], "o.gif"),
        (["frames", "a", "--mask-dir", "x"], "several videos need --out"),
    ]
    for args, expect in cases:
        proc = run_check(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.stdout.strip() == "torch loaded: False status: 2", (args, proc.stdout, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], (args, lines)
    assert not (tmp_path / "frames_masks").exists()


def test_the_library_does_what_the_command_does(tmp_path, monkeypatch, ckpt):
    """TrackJob.run (what siammae-track calls) and the library (load_tracker + track_video) with the same arguments
    write byte-identical masks and record the same settings; load_tracker's policy: the task's default preset, 8
    frames a call, 1 for a real-time live source unless a chunk is given; the default output folders."""
    from siammae.data.live import LiveSource
    from siammae.tracking import Tracker, load_tracker, track_video
    from siammae.tracking.job import TrackJob, default_preset

    assert default_preset(True) == "siammae-jhmdb" and default_preset(False) == "siammae-davis"
    tracker = load_tracker(ckpt, keypoints=True, device="cpu", size=32)
    assert isinstance(tracker, Tracker) and tracker.preset.name == "siammae-jhmdb" and tracker.chunk == 8
    live = object.__new__(LiveSource)  # its type is what counts here, not an open stream
    live.realtime = True
    assert tracker.chunk_for(live) == 1 and tracker.chunk_for([]) == 8
    assert load_tracker(ckpt, device="cpu", size=32, chunk=4).chunk_for(live) == 4  # given: kept

    frames, truth = make_synthetic_clip(5, size=(32, 48), num_objects=1)
    (tmp_path / "clip").mkdir()
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(tmp_path / "clip" / f"{i:05d}.png")
    write_mask(tmp_path / "m.png", truth[0])
    monkeypatch.chdir(tmp_path)
    job = TrackJob(videos=("clip",), mask=Path("m.png"), ckpt=str(ckpt), size=32, device="cpu", progress=False)
    assert job.outputs().out == Path("clip_masks")  # the default output folder, as the command's
    by_job = job.run()
    by_library = track_video(load_tracker(ckpt, device="cpu", size=32), "clip", "m.png", out="lib", progress=False)
    assert by_job.status == by_library.status == "complete" and by_job.frames == by_library.frames == 5
    assert by_job.settings == by_library.settings and by_job.settings.weights["path"] == str(ckpt)
    written = sorted(p.name for p in Path("clip_masks").iterdir())
    assert written == sorted(p.name for p in Path("lib").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert all((Path("clip_masks") / n).read_bytes() == (Path("lib") / n).read_bytes() for n in written)
    assert TrackJob(videos=("clip.mp4",), keypoints=Path("k.json")).outputs().out == Path("clip_track")


def test_standard_input_writes_to_a_folder_named_stdin():
    """Issue 29: reading from ``-`` with no output given wrote to ``-_masks``, which ``ls -_masks`` takes for
    options; it is ``stdin_masks`` (``stdin_track`` for keypoints)."""
    from siammae.tracking.job import TrackJob

    assert TrackJob(videos=("-",), mask=Path("m.png")).outputs().out == Path("stdin_masks")
    assert TrackJob(videos=("-",), keypoints=Path("k.json")).outputs().out == Path("stdin_track")


def synthetic_mp4(path, faststart: bool):
    frames, masks = make_synthetic_clip(6, (32, 48), seed=0)
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = 32, 48, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return frames, masks


def test_mp4_index_position_is_read_from_the_first_bytes(tmp_path):
    synthetic_mp4(tmp_path / "last.mp4", faststart=False)
    synthetic_mp4(tmp_path / "first.mp4", faststart=True)
    data = (tmp_path / "last.mp4").read_bytes()
    last, head = mp4_index_last(io.BytesIO(data))
    assert last and data.startswith(head) and len(head) < 200  # decided from the header boxes alone
    assert mp4_index_last(io.BytesIO((tmp_path / "first.mp4").read_bytes()))[0] is False
    ts = b"G" + bytes(range(256)) * 8  # MPEG-TS and anything else: not an MP4, replayed byte for byte
    replay, spooled = stdin_input(io.BytesIO(ts), realtime=False)
    assert spooled is False and replay.read(7) + replay.read() == ts
    with pytest.raises(VideoError, match="faststart"):
        stdin_input(io.BytesIO(data), realtime=True)


@pytest.mark.parametrize("faststart", [False, True])
def test_synthetic_mp4_piped_on_standard_input(tmp_path, ckpt, faststart):
    frames, masks = synthetic_mp4(tmp_path / "clip.mp4", faststart)
    write_mask(tmp_path / "first.png", masks[0])
    cmd = [sys.executable, "-m", "siammae.cli.track", "-", "--mask", tmp_path / "first.png", "--ckpt", ckpt,
           "--size", "32", "--device", "cpu", "--out", tmp_path / "masks", "--report", tmp_path / "r.json"]  # fmt: skip
    with open(tmp_path / "clip.mp4", "rb") as stdin:
        proc = subprocess.run([str(c) for c in cmd], stdin=stdin, env=env(), capture_output=True, text=True,
                              timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("copying it to a temporary file" in proc.stderr) is not faststart
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == len(frames) == 6
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == [f"{i:05d}.png" for i in range(6)]


@pytest.mark.skipif(not EXAMPLE.is_file(), reason=f"{EXAMPLE} not present (shared data)")
def test_real_mp4_with_its_index_last_streams_from_a_pipe(tmp_path, ckpt):
    with open(EXAMPLE, "rb") as f:
        assert mp4_index_last(f)[0]  # the case of the issue: ftyp, free, mdat ... moov
    ids = np.zeros((480, 640), np.uint8)
    ids[200:300, 250:400] = 1
    write_mask(tmp_path / "first.png", ids)
    base = [sys.executable, "-m", "siammae.cli.track", "-", "--mask", tmp_path / "first.png", "--ckpt", ckpt,
            "--size", "64", "--device", "cpu", "-q", "--max-frames", "5"]  # fmt: skip
    with open(EXAMPLE, "rb") as stdin:
        proc = subprocess.run([str(c) for c in [*base, "--out", tmp_path / "masks"]], stdin=stdin, env=env(),
                              capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "masks").glob("*.png"))) == 5
    with open(EXAMPLE, "rb") as stdin:  # real time cannot wait for the whole file: one line with the fix
        proc = subprocess.run([str(c) for c in [*base, "--out", tmp_path / "rt", "--realtime"]], stdin=stdin,
                              env=env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: -: an MP4") and "faststart" in lines[0] and "mpegts" in lines[0]
    assert not (tmp_path / "rt").exists()


# ------------------------------------------------------------------------------------ a long run on a CPU
def test_a_long_cpu_run_says_what_is_faster():
    from siammae.model.weights import WEIGHTS
    from siammae.propagation.config import get_preset
    from siammae.tracking.job import cpu_hint

    w = WEIGHTS["dino-vits16"]
    hint = cpu_hint(1500, (480, 854), get_preset(None), w, 2)  # a 1-minute 480p clip, the default, 2 cores
    assert hint.startswith("1500 frames at 480x880 on this CPU will take about 69 min")
    assert "--size 240 is about 4x faster (1.9-2.8 frames/s" in hint
    assert "--size" not in cpu_hint(1500, (480, 854), get_preset(None, size=240), w, 2)  # already small
    assert cpu_hint(50, (480, 854), get_preset(None), w, 2) is None  # 2 minutes: nothing to say
    assert cpu_hint(1500, (480, 854), get_preset(None), w, 32) is None  # 32 cores: about 4 minutes
    assert cpu_hint(None, (480, 854), get_preset(None), w, 2) is None  # a frame count the header does not give


def test_the_hint_comes_once_before_the_model_loads(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import siammae.tracking.job as job
    from siammae.cli.track import main

    monkeypatch.setattr(job, "LONG_RUN_S", 0.0)  # every run is "long"
    monkeypatch.setenv("SIAMMAE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the weights cannot load: the hint came first
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(frames / f"{i:05d}.png")
    write_mask(tmp_path / "m.png", np.pad(np.ones((8, 8), np.uint8), ((20, 20), (28, 28))))
    args = [str(frames), "--mask", str(tmp_path / "m.png"), "--ckpt", "dino-vits16", "--device", "cpu",
            "--out", str(tmp_path / "out")]  # fmt: skip
    r = CliRunner().invoke(main, args)
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("note:")] == [lines[0]], r.stderr
    assert lines[0].startswith("note: 3 frames at 480x880 on this CPU will take about") and "--size 240" in lines[0]
    assert lines[-1].startswith("error: dino-vits16 is not in the cache")
