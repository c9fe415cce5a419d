"""Live sources: a pipe fed at real time by a writer process, an MPEG-TS stream from a local HTTP server, real-time
frame dropping with a deliberately slow encoder, stop conditions, and the per-frame JSON Lines log."""

import functools
import http.server
import json
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import live_writer, write_mpegts
from PIL import Image

from siammae.data.live import LiveSource, is_live, open_source
from siammae.data.synthetic import make_synthetic_clip
from siammae.errors import VideoError
from siammae.tracking import Tracker, track_video

SIZE, FPS = (48, 64), 20


class ColourEncoder:
    """A FrameEncoder whose features are each 8x8 patch's mean colour (the synthetic objects are warm, the background
    cool), optionally slow: ``delay`` seconds per frame, a stand-in for a model slower than the source."""

    patch_size, embed_dim, fixed_size, device = 8, 3, None, torch.device("cpu")
    dtype, path, info = "fp32", None, None  # the rest of the FrameEncoder Protocol: no exported file here

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def __call__(self, frames):  # (B, 3, H, W) -> (B, H/8, W/8, 3)
        time.sleep(self.delay * len(frames))
        return F.avg_pool2d(frames - 0.5, 8).permute(0, 2, 3, 1)


def tracker(delay=0.0, chunk=2):
    return Tracker(ColourEncoder(delay), preset="dino", device="cpu", size=SIZE[0], chunk=chunk)


def first_mask(tmp_path, seed=0):
    _, masks = make_synthetic_clip(1, SIZE, seed=seed)
    path = tmp_path / "first.png"
    Image.fromarray(masks[0]).save(path)
    return masks[0], path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_is_live():
    assert is_live("-") and is_live("rtsp://cam/1") and is_live("/dev/video0") and is_live("0", format="avfoundation")
    assert not is_live("clip.mp4") and not is_live("frames/")


def test_pipe_fed_at_real_time(tmp_path):
    n = 24
    mask, mask_path = first_mask(tmp_path)
    out, jsonl, report = tmp_path / "masks", tmp_path / "frames.jsonl", tmp_path / "r.json"
    with live_writer(n, SIZE, FPS) as proc:
        src = LiveSource(f"pipe:{proc.stdout.fileno()}")
        result = track_video(tracker(), src, mask_path, out=out, jsonl=jsonl, report=report, progress=False).to_json()
    assert result["status"] == "complete" and result["frames"] == n and result["video"]["kind"] == "live"
    assert sorted(p.stem for p in out.glob("*.png")) == [f"{i:05d}" for i in range(n)]
    lines = read_lines(jsonl)
    assert [x["index"] for x in lines] == list(range(n))
    stamps = [x["time"] for x in lines]
    assert np.allclose(np.diff(stamps), 1 / FPS, atol=1e-3)  # the stream's own time stamps
    for x in (lines[0], lines[-1]):  # area and box agree with the PNG written for that frame
        ids = np.asarray(Image.open(out / f"{x['name']}.png"))
        ys, xs = np.nonzero(ids == 1)
        assert x["objects"]["1"] == {"area": len(xs), "bbox": [xs.min(), ys.min(), xs.max(), ys.max()]}
    assert lines[0]["objects"]["1"]["area"] == int((mask == 1).sum())
    lat = result["latency"]
    assert lat["frames"] == n and 0 < lat["median_ms"] <= lat["p95_ms"] < 2000
    assert "Latency per frame" in report.with_suffix(".md").read_text()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / "www"``; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_mpegts_over_http_gives_the_masks_of_the_file(tmp_path, http_root):
    root, url = http_root
    frames, _ = make_synthetic_clip(12, SIZE, seed=0)
    write_mpegts(str(root / "clip.ts"), frames, fps=FPS)
    _, mask_path = first_mask(tmp_path)
    live = track_video(tracker(), open_source(f"{url}/clip.ts"), mask_path, out=tmp_path / "live", progress=False)
    assert live.frames == 12 and live.video.kind == "live"
    track_video(tracker(), root / "clip.ts", mask_path, out=tmp_path / "file", progress=False)
    for i in range(12):
        name = f"{i:05d}.png"
        assert (tmp_path / "live" / name).read_bytes() == (tmp_path / "file" / name).read_bytes()
    with pytest.raises(VideoError, match="cannot open live source"):
        LiveSource(f"{url}/missing.ts", timeout=5)


def test_realtime_drops_frames_at_the_input_and_bounds_latency(tmp_path):
    n, delay = 40, 0.15  # 20 frames/s in, at most ~6 frames/s through the encoder
    _, mask_path = first_mask(tmp_path)
    out, report = tmp_path / "masks", tmp_path / "r.json"
    with live_writer(n, SIZE, FPS) as proc:
        src = LiveSource(f"pipe:{proc.stdout.fileno()}", realtime=True)
        result = track_video(tracker(delay, chunk=1), src, mask_path, out=out, report=report, progress=False).to_json()
    dropped = result["dropped"]
    kept = sorted(int(p.stem) for p in out.glob("*.png"))
    assert dropped["frames"] > n // 3 and result["frames"] + dropped["frames"] == n  # every frame accounted for
    assert kept[0] == 0 and len(kept) == result["frames"]
    listed = {i for a, b in dropped["indices"] for i in range(a, b + 1)}
    assert listed == set(range(n)) - set(kept)  # the report lists exactly the frames not tracked
    # without dropping, the last frame would wait ~ n * delay - n / FPS = 4 s; here a few frames' work at most
    assert result["latency"]["p95_ms"] < 1500, result["latency"]
    assert "frames dropped at the input" in report.with_suffix(".md").read_text()


def test_stop_after_max_frames_or_duration(tmp_path):
    frames, _ = make_synthetic_clip(20, SIZE, seed=1)
    path = tmp_path / "clip.ts"
    write_mpegts(str(path), frames, fps=FPS)
    slow = []
    for f in LiveSource(str(path), realtime=True):  # read at full speed, consumed slowly: only the newest are kept
        slow.append(f.index)
        time.sleep(0.05)
    assert slow[0] == 0 and len(slow) < 20 and slow[-1] == 19  # frame 0 (the first mask's) is never dropped
    got = list(LiveSource(str(path), max_frames=5))
    assert [f.index for f in got] == [0, 1, 2, 3, 4] and got[0].rgb.shape == (*SIZE, 3)
    got = list(LiveSource(str(path), duration=0.5))
    assert len(got) == 10 and got[-1].time - got[0].time == pytest.approx(0.45)
    everything = LiveSource(str(path))  # not real time: every frame, none dropped
    assert len(list(everything)) == 20 and everything.dropped is None
    with pytest.raises(VideoError, match="read once"):
        list(everything)


def test_one_tracker_runs_two_streams_at_once(tmp_path):
    """Each run owns its writer, status and timings (TrackingRun), so two runs can share one tracker concurrently."""
    shared = tracker()
    _, mask_path = first_mask(tmp_path)
    paths = []
    for k in range(2):
        frames, _ = make_synthetic_clip(10 + 4 * k, SIZE, seed=0)
        paths.append(tmp_path / f"clip{k}.ts")
        write_mpegts(str(paths[-1]), frames, fps=FPS)
    alone = [track_video(tracker(), p, mask_path, out=tmp_path / f"alone{k}", progress=False) for k, p in
             enumerate(paths)]  # fmt: skip
    reports = [None, None]

    def run(k):
        reports[k] = track_video(shared, paths[k], mask_path, out=tmp_path / f"both{k}", progress=False)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert reports[k].frames == alone[k].frames == 10 + 4 * k
        assert all(s.seconds > 0 for s in reports[k].time.stages.values())
        for p in (tmp_path / f"alone{k}").iterdir():
            assert (tmp_path / f"both{k}" / p.name).read_bytes() == p.read_bytes()


# ------------------------------------------------------------------------------------------- damaged streams
def damaged_stream(tmp_path, n=60, garbage=200_000):
    """An MPEG-TS clip with ``garbage`` random bytes spliced into the middle (on a packet boundary)."""
    import io

    frames, masks = make_synthetic_clip(n, SIZE, seed=0)
    buf = io.BytesIO()
    write_mpegts(buf, frames, fps=FPS)
    data = buf.getvalue()
    mid = len(data) // 2 // 188 * 188
    junk = np.random.default_rng(1).integers(0, 256, garbage, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.ts"
    path.write_bytes(data[:mid] + junk + data[mid:])
    return path, masks


def test_garbage_in_a_stream_is_counted_warned_and_numbered_honestly(tmp_path):
    path, masks = damaged_stream(tmp_path)
    Image.fromarray(masks[0]).save(tmp_path / "first.png")
    with pytest.warns(UserWarning) as warned:
        report = track_video(tracker(), open_source(str(path), format="mpegts"),
                             tmp_path / "first.png", out=tmp_path / "masks", progress=False).to_json()  # fmt: skip
    messages = [str(w.message) for w in warned]
    assert any("corrupt data in the stream" in m for m in messages)
    assert any("frame(s) missing in the stream before frame" in m for m in messages)
    gaps = report["gaps"]
    assert report["status"] == "input-gaps" and gaps["count"] >= 1 and gaps["frames_missing"] >= 1
    names = sorted(int(p.stem) for p in (tmp_path / "masks").glob("*.png"))
    assert len(names) == report["frames"] == 60 - gaps["frames_missing"]  # every frame decoded, none invented
    assert max(names) == 59  # the frames after the gap keep their numbers in the source
    for index, missing in gaps["at"]:
        assert all(i not in names for i in range(index - missing, index)) and index in names


def test_a_clean_stream_reports_no_gaps(tmp_path):
    frames, masks = make_synthetic_clip(20, SIZE, seed=0)
    write_mpegts(tmp_path / "clean.ts", frames, fps=FPS)
    Image.fromarray(masks[0]).save(tmp_path / "first.png")
    report = track_video(tracker(), open_source(str(tmp_path / "clean.ts"), format="mpegts"), tmp_path / "first.png",
                         out=tmp_path / "masks", report=tmp_path / "r.json", progress=False).to_json()  # fmt: skip
    assert report["status"] == "complete" and report["frames"] == 20
    assert report["gaps"] == {"count": 0, "frames_missing": 0, "corrupt_packets": 0, "at": []}
    assert sorted(int(p.stem) for p in (tmp_path / "masks").glob("*.png")) == list(range(20))


# ------------------------------------------------------------------------------------------- report honesty
def test_stage_times_of_one_thread_never_exceed_the_wall_time(tmp_path):
    frames, masks = make_synthetic_clip(24, SIZE, seed=0)
    write_mpegts(tmp_path / "clip.ts", frames, fps=FPS)
    Image.fromarray(masks[0]).save(tmp_path / "first.png")
    report = track_video(tracker(delay=0.01), open_source(str(tmp_path / "clip.ts"), format="mpegts"),
                         tmp_path / "first.png", out=tmp_path / "masks", overlay=tmp_path / "o.mp4",
                         progress=False).to_json()  # fmt: skip
    t = report["time"]
    assert set(t["stages"]) == {"decode", "encode", "propagate", "read_out", "write"}
    threads = {s["thread"] for s in t["stages"].values()}
    assert threads == {"reader", "main", "writer"}
    for thread in threads:
        busy = sum(s["seconds"] for s in t["stages"].values() if s["thread"] == thread)
        assert busy == pytest.approx(t["busy_seconds_per_thread"][thread], abs=1e-9)
        assert busy <= t["total_seconds"], (thread, t)
    assert t["stages"]["read_out"]["thread"] == "writer"  # on a CPU the read-out runs beside the encoder
