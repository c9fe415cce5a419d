"""Tracker and track_video end to end on synthetic videos with known ground truth, through the real propagation
engine, with an encoder whose features are known to separate the object's texture from the background's."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import colour_encoder, interrupt_reading_at, iou, write_with_pyav
from PIL import Image

from siammae.data.palette import davis_palette
from siammae.data.synthetic import MAX_OBJECTS, iter_synthetic_clip, make_synthetic_clip
from siammae.data.video import open_video, write_video
from siammae.errors import InputError, VideoError
from siammae.model.config import ModelConfig
from siammae.model.encoder import ViTEncoder
from siammae.tracking import Tracker, track_video
from siammae.tracking.report import RunReport, StageTimes


@pytest.fixture(scope="module")
def clip():
    return make_synthetic_clip(16, (128, 160), seed=0)


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_clip_is_deterministic_with_ground_truth():
    f1, m1 = make_synthetic_clip(5, (40, 56), seed=7, num_objects=2)
    f2, m2 = make_synthetic_clip(5, (40, 56), seed=7, num_objects=2)
    f3, _ = make_synthetic_clip(5, (40, 56), seed=8, num_objects=2)
    assert all(np.array_equal(a, b) for a, b in zip(f1 + m1, f2 + m2, strict=True))
    assert not np.array_equal(f1[0], f3[0])
    assert f1[0].shape == (40, 56, 3) and f1[0].dtype == np.uint8 and m1[0].dtype == np.uint8
    for m in m1:
        assert set(np.unique(m)) == {0, 1, 2}
        assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()  # inside the frame
    assert not np.array_equal(m1[0], m1[4])  # the objects move
    # the objects' pixels are warm (red > blue), the background's cool
    assert (f1[0][m1[0] > 0][:, 0].astype(int) > f1[0][m1[0] > 0][:, 2]).mean() > 0.95
    assert (f1[0][m1[0] == 0][:, 2].astype(int) > f1[0][m1[0] == 0][:, 0]).mean() > 0.95


def test_iter_synthetic_clip_is_lazy_and_equals_the_lists():
    it = iter_synthetic_clip(None, 32, seed=1)  # endless
    first = [next(it) for _ in range(3)]
    frames, masks = make_synthetic_clip(3, 32, seed=1)
    assert all(np.array_equal(a[0], b) for a, b in zip(first, frames, strict=True))
    assert all(np.array_equal(a[1], b) for a, b in zip(first, masks, strict=True))
    with pytest.raises(ValueError, match="num_objects"):
        next(iter_synthetic_clip(3, 32, num_objects=MAX_OBJECTS + 1))
    _, late = make_synthetic_clip(6, 48, seed=2, num_objects=3, appear=(0, 2, 5))
    assert [sorted(set(np.unique(m)) - {0}) for m in late] == [[1], [1], [1, 2], [1, 2], [1, 2], [1, 2, 3]]


# ------------------------------------------------------------------------------------------------ Tracker
@pytest.mark.parametrize("preset", ["siammae-davis", "dino"])
def test_tracks_a_synthetic_object(clip, preset):
    frames, masks = clip
    tracker = Tracker(colour_encoder(), preset=preset, device="cpu", size=128, chunk=4)
    got = list(tracker.masks(frames, masks[0]))
    assert [i for i, _ in got] == list(range(len(frames)))
    np.testing.assert_array_equal(got[0][1], masks[0])  # frame 0: the given mask
    scores = [iou(ids == 1, m == 1) for (_, ids), m in zip(got, masks, strict=True)]
    assert min(scores) > 0.9, scores
    assert all(set(np.unique(ids)) <= {0, 1} for _, ids in got)
    times = StageTimes()  # the timer a run hands the stream: every stage of every frame, decoding ahead included
    assert sum(1 for _ in tracker.stream(frames, masks[0], times=times)) == len(frames)
    assert times.frames == len(frames) and times.seconds["encode"] > 0 and times.seconds["decode"] > 0


def test_later_mask_adds_an_object_and_chunking_does_not_change_results():
    frames, masks = make_synthetic_clip(12, (96, 128), seed=5, num_objects=2, appear=(0, 5))
    assert 2 not in masks[4] and 2 in masks[5]
    first, later = masks[0], {5: np.where(masks[5] == 2, 2, 0).astype(np.uint8)}  # object 2 enters at frame 5
    runs = {}
    for chunk in (1, 4):
        tracker = Tracker(colour_encoder(), preset="dino", device="cpu", size=96, chunk=chunk)
        runs[chunk] = [ids for _, ids in tracker.masks(frames, first, later)]
    for a, b in zip(runs[1], runs[4], strict=True):
        np.testing.assert_array_equal(a, b)  # chunking changes nothing: the same masks, pixel for pixel
    out = runs[4]
    assert all(2 not in ids for ids in out[:5])
    assert all(2 in ids for ids in out[5:])
    np.testing.assert_array_equal(out[5][later[5] > 0], 2)  # the given mask is painted over its frame
    assert min(iou(ids == 2, m == 2) for ids, m in zip(out[6:], masks[6:], strict=True)) > 0.75


def test_ids_are_preserved(clip):
    frames, masks = clip
    first = np.where(masks[0] > 0, 200, 0).astype(np.uint8)
    first[masks[0].shape[0] // 2 :] = np.where(first[masks[0].shape[0] // 2 :] > 0, 3, 0)  # split in two ids
    tracker = Tracker(colour_encoder(), preset="dino", device="cpu", size=128, chunk=8)
    for _, ids in tracker.masks(frames[:6], first):
        assert set(np.unique(ids)) == {0, 3, 200}


def test_track_soft_for_other_read_outs(clip):
    frames, masks = clip
    tracker = Tracker(colour_encoder(), preset="dino", device="cpu", size=128, chunk=4)
    h, w = tracker.grid_size(128, 160)
    assert (h, w) == (32, 32)  # DINO floors the long side to a multiple of 64
    hard = [soft for _, soft in tracker.soft(frames[:6], masks[0])]
    assert all(s.shape == (2, h, w) and s.dtype == torch.float32 for s in hard)
    # (C, h, w) float labels on the patch grid, e.g. keypoint heatmaps, propagate as given
    given = hard[0].clone()
    soft = [s for _, s in tracker.soft(frames[:6], given.numpy())]
    torch.testing.assert_close(soft[0], given)
    for a, b in zip(soft, hard, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match=r"soft first labels must be \(C, 32, 32\)"):
        next(iter(tracker.soft(frames, torch.zeros(2, 8, 8))))


def test_decoding_runs_ahead_by_a_bounded_number_of_frames():
    produced, consumed, ahead = [0], [0], []

    def frames():
        for frame, _ in iter_synthetic_clip(40, 32, seed=0):
            produced[0] += 1
            ahead.append(produced[0] - consumed[0])
            yield frame

    mask = next(iter_synthetic_clip(1, 32, seed=0))[1]
    tracker = Tracker(colour_encoder(), preset="dino", device="cpu", size=32, chunk=2)
    for _ in tracker.masks(frames(), mask):
        consumed[0] += 1
        time.sleep(0.005)  # a slow consumer: the decoder must wait, not pile frames up
    assert consumed[0] == 40
    # the bounded queue (2 * chunk), one chunk being encoded, one frame in the decoder's hand
    assert max(ahead) <= 2 * 2 + 2 + 1


def test_keyboard_interrupt_in_the_frame_source_reaches_the_caller(clip):
    frames, masks = clip

    def source():
        yield from frames[:5]
        raise KeyboardInterrupt

    tracker = Tracker(colour_encoder(), preset="dino", device="cpu", size=128, chunk=2)
    before = set(threading.enumerate())  # other tests' threads (an abandoned download's) are not this run's
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for i, _ in tracker.masks(source(), masks[0]):
            seen.append(i)
    assert seen == [0, 1, 2, 3, 4]  # every frame before the interrupt
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("siammae-")]
    assert not left  # no thread of the run left behind


def test_frame_size_rules():
    vits8 = ViTEncoder(ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2))
    assert Tracker(vits8, preset="dino", device="cpu").frame_size(480, 854) == (480, 832)  # DINO read_frame
    # siammae-davis: CropMAE's fixed 480x880, as siammae-eval (was short side 480, aspect kept: 480x848)
    assert Tracker(vits8, preset="siammae-davis", device="cpu").frame_size(480, 854) == (480, 880)
    assert Tracker(vits8, preset="siammae-davis", device="cpu", size=160).frame_size(854, 480) == (280, 160)


class _FixedSizeEncoder:
    """A FrameEncoder as the ONNX / TensorRT runtimes implement it: fixed input size, normalisation inside."""

    patch_size = 4
    embed_dim = 16
    device = torch.device("cpu")
    dtype = "fp32"
    path = None
    info = None  # an exported file's metadata (normalisation, weights): none here

    def __init__(self, fixed_size):
        self.fixed_size = fixed_size
        self.model = colour_encoder()
        self.calls = 0

    def __call__(self, frames):
        assert tuple(frames.shape[-2:]) == self.fixed_size
        self.calls += 1
        return self.model.features((frames - 0.45) / 0.225)


def test_frame_encoder_objects_are_used_as_they_are(clip):
    frames, masks = clip
    encoder = _FixedSizeEncoder((128, 160))
    tracker = Tracker(encoder, preset="siammae-davis", size=128, chunk=8, n_last=4)  # the plumbing, not the preset
    assert tracker.encoder is encoder
    out = [ids for _, ids in tracker.masks(frames[:9], masks[0])]
    assert encoder.calls == 2 and iou(out[-1] == 1, masks[8] == 1) > 0.9
    tracker = Tracker(_FixedSizeEncoder((224, 224)), preset="siammae-davis", size=128)
    with pytest.raises(
        InputError, match=r"built for 224x224 frames \(height x width\) but .* encodes this 128x160 video at 128x160"
    ):
        list(tracker.masks(frames[:2], masks[0]))


def test_bad_arguments(clip):
    frames, masks = clip
    enc = colour_encoder()
    with pytest.raises(InputError, match="chunk must be"):
        Tracker(enc, chunk=0)
    with pytest.raises(InputError, match="unknown propagation preset"):
        Tracker(enc, preset="nope")
    with pytest.raises(InputError, match="unknown propagation setting"):
        Tracker(enc, top_k=3)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            Tracker(enc, device="cuda")
    tracker = Tracker(enc, preset="dino", device="cpu", size=128)
    with pytest.raises(InputError, match="first mask: mask is empty"):
        list(tracker.masks(frames[:2], np.zeros_like(masks[0])))
    with pytest.raises(InputError, match="frame 1 is 80x64 but frame 0 is 160x128"):
        list(tracker.masks([frames[0], frames[1][:64, :80]], masks[0]))
    with pytest.raises(InputError, match=r"frame 0: expected an \(H, W, 3\) uint8"):
        list(tracker.masks([frames[0].astype(np.float32)], masks[0]))


# -------------------------------------------------------------------------------------------- track_video
@pytest.fixture(scope="module")
def video(tmp_path_factory, clip):
    frames, masks = clip
    path = tmp_path_factory.mktemp("tv") / "clip.mp4"
    write_video(path, frames[:10], fps=10)
    return path, masks


def _tracker(size=128, chunk=4):
    return Tracker(colour_encoder(), preset="dino", device="cpu", size=size, chunk=chunk)


def test_track_video_writes_masks_overlay_and_report(tmp_path, video):
    path, masks = video
    out, overlay, report = tmp_path / "masks", tmp_path / "overlay.mp4", tmp_path / "run" / "report.json"
    result = track_video(_tracker(), path, masks[0], out=out, overlay=overlay, report=report, progress=False)
    pngs = sorted(out.iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(10)]
    for p, m in zip(pngs, masks, strict=False):
        with Image.open(p) as im:
            assert im.mode == "P" and im.getpalette()[3:6] == list(davis_palette()[1])
            assert iou(np.asarray(im) == 1, m == 1) > 0.85  # through lossy h264
    src = open_video(overlay)
    assert (src.width, src.height, src.num_frames, src.fps) == (160, 128, 10, 10.0)
    first = next(iter(src)).rgb.astype(int)
    inside = masks[0] == 1
    assert first[inside][:, 0].mean() > first[~inside][:, 0].mean() + 40  # tinted with id 1's red
    saved = json.loads(report.read_text())
    assert saved == json.loads(json.dumps(result.to_json())) and RunReport.from_json(saved) == result
    assert result.time.total_seconds == saved["time"]["total_seconds"] and result.objects == (1,)
    assert saved["status"] == "complete" and saved["interrupted"] is False and saved["frames"] == 10
    assert saved["objects"] == [1]
    assert saved["video"]["kind"] == "video" and saved["processing"]["grid"] == [32, 32]
    assert set(saved["time"]["stages"]) == {"decode", "encode", "propagate", "read_out", "write"}
    assert all(s["seconds"] > 0 for s in saved["time"]["stages"].values())
    for thread, busy in saved["time"]["busy_seconds_per_thread"].items():  # busy time, per thread, within the wall
        assert busy <= saved["time"]["total_seconds"], thread
    assert saved["fps"] > 0 and saved["memory"]["peak_host_mib"] > 50
    assert saved["settings"]["propagation"]["topk"] == 5 and saved["versions"]["torch"] == torch.__version__
    md = report.with_suffix(".md").read_text()
    assert "end to end" in md and "status: **complete**" in md


def test_track_video_refuses_to_overwrite(tmp_path, video, monkeypatch):
    path, masks = video
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.png").write_bytes(b"x")
    with pytest.raises(InputError, match="output folder is not empty"):
        track_video(_tracker(), path, masks[0], out=tmp_path / "out", progress=False)
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(InputError, match="r.json: output file exists"):
        track_video(_tracker(), path, masks[0], report=tmp_path / "r.json", progress=False)
    report = track_video(_tracker(), path, masks[0], progress=False)  # no output given: where the command puts it
    default = Path(f"{Path(path).stem}_masks")
    assert report.outputs["out"] == str(default) and len(list(default.glob("0*.png"))) == 10
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot write .*masks: Not a directory"):
        track_video(_tracker(), path, masks[0], out=tmp_path / "file" / "masks", progress=False)
    track_video(_tracker(), path, masks[0], out=tmp_path / "out", overwrite=True, progress=False)
    assert len(list((tmp_path / "out").glob("0*.png"))) == 10
    assert not (tmp_path / "out" / "old.png").exists()  # replaced means: this run's outputs only


def test_interrupt_keeps_every_png_valid_and_marks_the_report(tmp_path, clip, monkeypatch):
    frames, masks = clip
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    interrupt_reading_at(monkeypatch, "00007")  # Ctrl-C in the middle of decoding
    out, overlay, report = tmp_path / "out", tmp_path / "o.mp4", tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        track_video(_tracker(chunk=3), folder, masks[0], out=out, overlay=overlay, report=report, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(7)]  # no temp file either
    for p in out.iterdir():
        with Image.open(p) as im:
            im.load()
    assert open_video(overlay).num_frames == 7  # the overlay of the frames before is a valid video
    saved = json.loads(report.read_text())
    assert saved["status"] == "interrupted" and saved["interrupted"] is True and saved["frames"] == 7
    assert "status: **interrupted**" in report.with_suffix(".md").read_text()


def test_truncated_video_keeps_the_frames_before(tmp_path, clip):
    frames, masks = clip
    full = tmp_path / "full.mkv"
    write_with_pyav(full, frames)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    out, report = tmp_path / "out", tmp_path / "r.json"
    with pytest.raises(VideoError, match=r"cut.mkv: decoding stopped at frame (\d+) of 16") as e:
        track_video(_tracker(), cut, masks[0], out=out, report=report, progress=False)
    n = int(e.value.args[0].split("stopped at frame ")[1].split()[0])
    assert 0 < n < 16
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(n)]
    saved = json.loads(report.read_text())
    assert saved["status"] == "error" and "stopped at frame" in saved["error"] and saved["frames"] == n
