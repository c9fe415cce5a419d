"""Keypoint tracking for users (``track_video(keypoints=...)``, ``siammae-track --keypoints``) on synthetic clips whose
keypoints are known in every frame, through the real tracker and propagation engine.

The clips are ``make_synthetic_clip``'s moving ellipse with its striped texture replaced by a colour gradient in
the object's own coordinates (red grows to the right, green downwards), so that every point of the object has its
own colour and moves with it. With the colour-feature encoder of test_tracking.py a patch's feature is then its
position on the object, which is what locating a point needs. (On the striped texture that encoder cannot tell
one point of the object from another: propagated points wander over the whole object, 14-35 px off.)
"""

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, colour_encoder, interrupt_reading_at, run_until_sigint
from PIL import Image

from siammae.cli.track import main
from siammae.data.keypoints import KeypointTrackWriter
from siammae.data.masks import write_mask
from siammae.data.palette import davis_palette
from siammae.data.synthetic import iter_synthetic_clip, make_synthetic_clip
from siammae.data.video import open_video, write_video
from siammae.errors import InputError
from siammae.model.checkpoint import save_checkpoint
from siammae.propagation.heatmaps import SIGMA, keypoints_to_heatmaps
from siammae.tracking import Tracker, draw_keypoints, track_video

SIZE = (96, 120)  # (H, W) of the clips; the tracker encodes them at 128x160 (short side 128)
PATCH = 4
# Offsets of the tracked points from the object's centre, in units of its semi-axes: the centre, and four points
# halfway to the rim (nearer the rim a patch mixes in the background and the colour no longer names the point).
OFFSETS = np.array([[0.0, 0.0], [0.3, 0.3], [-0.3, -0.3], [0.3, -0.3], [-0.3, 0.3]])


def gradient_clip(num_frames: int, size=SIZE, seed: int = 0):
    """(frames, points [T, J, 2] (x, y) 0-based pixels of the ``OFFSETS`` points in every frame)."""
    frames, masks = make_synthetic_clip(num_frames, size, seed=seed)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    ys, xs = np.nonzero(masks[0])
    radii = np.array([xs.max() - xs.min(), ys.max() - ys.min()]) / 2  # (rx, ry), the same in every frame
    out, points = [], []
    for frame, mask in zip(frames, masks, strict=True):
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean(), ys.mean()  # the ellipse's centre in pixel-centre coordinates
        gradient = np.stack(
            [150 + 100 * (xx - cx) / radii[0], 140 + 100 * (yy - cy) / radii[1], np.full_like(xx, 40.0)], -1
        )  # (H, W, 3)
        frame = frame.copy()
        frame[mask > 0] = np.clip(gradient[mask > 0], 0, 255).astype(np.uint8)
        out.append(frame)
        points.append(np.array([cx, cy]) + OFFSETS * radii)
    return out, np.stack(points)


def save_folder(frames, folder):
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:05d}.png")
    return folder


def read_track(folder):
    return json.loads((folder / "keypoints.json").read_text())


def track_xy(track) -> np.ndarray:
    """[T, J, 2] from a keypoint-track JSON, NaN for null."""
    return np.array(
        [[p if p is not None else [np.nan, np.nan] for p in f["keypoints"]] for f in track["frames"]], dtype=float
    )


def tracker(chunk: int = 4):
    # a queue of 4 frames, not 20: the read-out is under test here, not the preset (5x less affinity to compute)
    return Tracker(colour_encoder(patch=PATCH), preset="siammae-jhmdb", device="cpu", size=128, chunk=chunk, n_last=4)


@pytest.fixture(scope="module")
def clip():
    return gradient_clip(16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "colour.pt"
    save_checkpoint(path, colour_encoder(patch=PATCH))
    return path


# ------------------------------------------------------------------------------------------------ accuracy
def test_tracked_points_follow_the_object_in_original_pixels(clip, tmp_path):
    frames, truth = clip
    folder = save_folder(frames, tmp_path / "frames")
    t = tracker()
    h, w = t.grid_size(*SIZE)
    assert (h, w) == (32, 40)  # encoded at 128x160: one cell is 4 encoder pixels, 3 pixels of the clip
    cell = np.array([SIZE[1] / w, SIZE[0] / h])  # (x, y) pixels of the clip per cell
    # The tolerance, per axis: the Gaussian's peak sits on the cell nearest to the given point (up to half a cell
    # off) and a later frame's point is read out on cells again (another half cell), so a perfect tracker is
    # within one cell; the top-3 read-out weighs in the peak's neighbours, exp(-1 / (2 sigma^2)) = 0.135 each,
    # which moves it by at most 2 x 0.135 / 1.27 = 0.21 cells more.
    side = np.exp(-1 / (2 * SIGMA**2))
    tol = cell * (1.0 + 2 * side / (1 + 2 * side))  # (3.64, 3.64) pixels

    result = track_video(t, folder, keypoints=truth[0], out=tmp_path / "out", progress=False)
    track = read_track(tmp_path / "out")
    assert result.frames == len(track["frames"]) == len(frames) and track["status"] == "complete"
    got = track_xy(track)  # [T, J, 2]
    np.testing.assert_allclose(got[0], truth[0], atol=0.005)  # frame 0: the given points, not their cells
    err = np.abs(got - truth)  # [T, J, 2]
    assert (np.linalg.norm(truth[-1] - truth[0], axis=1) > 6 * cell[0]).all()  # the object travels > 6 cells
    assert (err[:, 0] <= tol).all(), err[:, 0]  # the centre, in every frame
    within = (err <= tol).all(-1)  # [T, J]
    assert within.mean() >= 0.9, within  # off-centre points: at most one (frame, point) pair in ten off
    assert np.median(err / cell) <= 0.5


def test_api_takes_a_file_names_and_null_points(clip, tmp_path):
    frames, truth = clip
    folder = save_folder(frames[:6], tmp_path / "frames")
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"keypoints": {"centre": truth[0, 0].tolist(), "hidden": None}}))
    report = tmp_path / "report.json"
    result = track_video(tracker(), folder, keypoints=first, out=tmp_path / "out", report=report, progress=False)
    track = read_track(tmp_path / "out")
    assert track["names"] == ["centre", "hidden"] and (track["width"], track["height"]) == (120, 96)
    assert [f["frame"] for f in track["frames"]] == [f"{i:05d}" for i in range(6)]
    assert [f["index"] for f in track["frames"]] == list(range(6))
    assert all(f["keypoints"][1] is None for f in track["frames"])  # a point not given is null in every frame
    assert all(f["keypoints"][0] is not None for f in track["frames"])
    assert track["settings"]["preset"] == "siammae-jhmdb" and track["settings"]["propagation"]["topk"] == 7
    assert result.keypoints == ("centre", "hidden") and result.objects is None and "objects" not in result.to_json()
    saved = json.loads(report.read_text())
    assert saved["status"] == "complete" and saved["frames"] == 6
    assert "- keypoints: centre, hidden" in report.with_suffix(".md").read_text()
    # the JSON Lines twin holds the same frames, one per line, in order
    lines = (tmp_path / "out" / "keypoints.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == track["frames"]


def test_interrupt_leaves_a_valid_track_of_the_frames_before(clip, tmp_path, monkeypatch):
    frames, truth = clip
    folder = save_folder(frames, tmp_path / "frames")
    interrupt_reading_at(monkeypatch, "00007")  # Ctrl-C in the middle of decoding
    out, overlay, report = tmp_path / "out", tmp_path / "o.mp4", tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        track_video(tracker(chunk=3), folder, keypoints=truth[0], out=out, overlay=overlay, report=report,
                              progress=False)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["keypoints.json", "keypoints.jsonl"]  # no temp file
    track = read_track(out)
    assert track["status"] == "interrupted" and [f["index"] for f in track["frames"]] == list(range(7))
    assert len((out / "keypoints.jsonl").read_text().splitlines()) == 7
    assert open_video(overlay).num_frames == 7
    assert json.loads(report.read_text())["status"] == "interrupted"


def test_api_bad_input(clip, tmp_path, monkeypatch):
    frames, truth = clip
    folder = save_folder(frames[:2], tmp_path / "frames")
    with pytest.raises(InputError, match=r"keypoint '1' at \(130, 5\) is outside the 120x96 frame"):
        track_video(tracker(), folder, keypoints=[[10, 10], [130, 5]], out=tmp_path / "a", progress=False)
    with pytest.raises(InputError, match=r"\[J, 2\] array"):
        track_video(tracker(), folder, keypoints=[1.0, 2.0, 3.0], out=tmp_path / "a", progress=False)
    with pytest.raises(InputError, match="every point is null"):
        track_video(tracker(), folder, keypoints=[[np.nan, np.nan]], out=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # inputs are checked before any output is made
    monkeypatch.chdir(tmp_path)  # no output given: the track goes where the command puts it
    report = track_video(tracker(), folder, keypoints=truth[0], progress=False)
    assert report.outputs["out"] == "frames_track" and (tmp_path / "frames_track" / "keypoints.json").is_file()


# ------------------------------------------------------------------------------------------ building blocks
def test_track_writer_streams_lines_and_writes_the_json_at_close(tmp_path):
    writer = KeypointTrackWriter(tmp_path / "k.json", tmp_path / "k.jsonl", ("a", "b"), (48, 64), {"video": "v"})
    assert not (tmp_path / "k.json").exists()
    writer.add("f0", np.array([[1.234, 2.0], [np.nan, np.nan]]))
    # the line is on disk as soon as the frame is added
    assert json.loads((tmp_path / "k.jsonl").read_text()) == {
        "frame": "f0", "index": 0, "keypoints": [[1.23, 2.0], None]
    }  # fmt: skip
    writer.add("f1", np.array([[3.0, 4.0], [5.0, 6.0]]))
    writer.close(status="complete")
    writer.close(status="ignored")  # idempotent
    data = json.loads((tmp_path / "k.json").read_text())
    assert data == {
        "names": ["a", "b"], "width": 64, "height": 48, "video": "v", "status": "complete",
        "frames": [
            {"frame": "f0", "index": 0, "keypoints": [[1.23, 2.0], None]},
            {"frame": "f1", "index": 1, "keypoints": [[3.0, 4.0], [5.0, 6.0]]},
        ],
    }  # fmt: skip
    empty = KeypointTrackWriter(tmp_path / "e.json", tmp_path / "e.jsonl", ("a",), (8, 8))
    empty.close(status="error")
    assert json.loads((tmp_path / "e.json").read_text())["frames"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.jsonl", "k.json", "k.jsonl"]


def test_draw_keypoints():
    rgb = np.full((40, 50, 3), 100, np.uint8)
    out = draw_keypoints(rgb, np.array([[10.2, 20.0], [np.nan, np.nan], [49.0, 0.0]]), radius=3)
    assert (rgb == 100).all()  # drawn on a copy
    pal = davis_palette()
    assert (out[20, 10] == pal[1]).all() and (out[20, 13] == pal[1]).all()  # the dot, radius 3 around (10, 20)
    assert (out[20, 14] == 255).all()  # its white ring
    assert (out[20, 15] == 100).all() and (out[25, 10] == 100).all()  # nothing beyond
    assert (out[0, 49] == pal[3]).all()  # point 2 (colour 3) at the corner, clipped to the frame
    assert (out[5, 49] == 100).all() and (out[0, 44] == 100).all()
    assert np.array_equal(draw_keypoints(rgb, np.array([[np.nan, np.nan]])), rgb)  # a null point draws nothing


def test_first_heatmaps_propagate_through_soft(clip):
    # the building block the pipeline uses: heatmaps on the tracker's grid, propagated as soft labels
    frames, truth = clip
    t = tracker()
    grid = t.grid_size(*SIZE)
    heatmaps = keypoints_to_heatmaps(truth[0], SIZE, grid)
    soft = [s for _, s in t.soft(frames[:3], heatmaps)]
    assert all(s.shape == (1 + len(OFFSETS), *grid) for s in soft)
    np.testing.assert_array_equal(soft[0].numpy(), heatmaps.numpy())


# ------------------------------------------------------------------------------------------------------ CLI
def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def video(tmp_path_factory, clip):
    frames, truth = clip
    root = tmp_path_factory.mktemp("kpv")
    write_video(root / "clip.mp4", frames[:10], fps=10)
    names = ["centre", "ne", "sw", "se", "nw"]
    (root / "first.json").write_text(json.dumps({"keypoints": truth[0].tolist(), "names": names}))
    return root, truth[:10]


def test_cli_writes_the_track_overlay_and_report(ckpt, video, tmp_path):
    root, truth = video
    out, overlay, report = tmp_path / "out", tmp_path / "o.mp4", tmp_path / "r.json"
    result = run(root / "clip.mp4", "--keypoints", root / "first.json", "--ckpt", ckpt, "--size", 128, "--n-last", 4,
                 "--out", out, "--overlay", overlay, "--report", report)  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    assert "tracked 10 frames (5 keypoints)" in result.output
    track = read_track(out)
    assert [f["frame"] for f in track["frames"]] == [f"{i:05d}" for i in range(10)]  # one entry per frame
    assert track["names"] == ["centre", "ne", "sw", "se", "nw"] and track["settings"]["preset"] == "siammae-jhmdb"
    got = track_xy(track)
    assert np.median(np.abs(got - truth)) <= 1.5  # through lossy h264 (colours at half resolution), cells of 3 px
    src = open_video(overlay)
    assert (src.num_frames, src.width, src.height) == (10, 120, 96)
    first = next(iter(src)).rgb.astype(int)
    x, y = np.round(truth[0, 0]).astype(int)
    assert first[y, x, 0] > first[y, x, 1] + 60  # the centre's dot in DAVIS colour 1, (128, 0, 0)
    saved = json.loads(report.read_text())
    assert saved["keypoints"] == track["names"] and saved["settings"]["preset"] == "siammae-jhmdb"
    assert saved["status"] == "complete" and saved["frames"] == 10


def test_cli_preset_can_be_overridden(ckpt, video, tmp_path):
    root, _ = video
    result = run(root / "clip.mp4", "--keypoints", root / "first.json", "--ckpt", ckpt, "--size", 128,
                 "--preset", "dino", "--topk", 3, "--out", tmp_path / "out", "--quiet")  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    settings = read_track(tmp_path / "out")["settings"]
    assert settings["preset"] == "dino" and settings["propagation"]["topk"] == 3


def test_cli_bad_input(ckpt, video, tmp_path):
    root, truth = video
    clip_mp4 = root / "clip.mp4"
    model = ["--ckpt", ckpt, "--size", 128, "--quiet"]
    out = tmp_path / "out"
    assert_one_line_error(run(clip_mp4, "--keypoints", tmp_path / "missing.json", *model, "--out", out),
                          "missing.json", "does not exist")  # fmt: skip
    (tmp_path / "bad.json").write_text('{"keypoints": [[1, 2],')
    assert_one_line_error(run(clip_mp4, "--keypoints", tmp_path / "bad.json", *model, "--out", out),
                          "bad.json", "not readable JSON")  # fmt: skip
    (tmp_path / "schema.json").write_text(json.dumps({"keypoints": [[1, 2, 3]]}))
    assert_one_line_error(run(clip_mp4, "--keypoints", tmp_path / "schema.json", *model, "--out", out),
                          "schema.json", "[x, y] (two finite numbers) or null")  # fmt: skip
    (tmp_path / "outside.json").write_text(json.dumps({"keypoints": {"tip": [120, 10]}}))
    assert_one_line_error(run(clip_mp4, "--keypoints", tmp_path / "outside.json", *model, "--out", out),
                          "outside.json", "'tip' at (120, 10) is outside the 120x96 frame")  # fmt: skip
    write_mask(tmp_path / "m.png", np.ones((96, 120), np.uint8))
    both = run(clip_mp4, "--keypoints", root / "first.json", "--mask", tmp_path / "m.png", *model, "--out", out)
    assert_one_line_error(both, "give either --keypoints or --mask / --mask-dir, not both")
    both = run(clip_mp4, "--keypoints", root / "first.json", "--mask-dir", tmp_path, *model, "--out", out)
    assert both.exit_code == 2 and "not both" in both.output
    assert not out.exists()  # nothing written by any of these


def test_cli_sigint_leaves_a_valid_track(ckpt, tmp_path):
    long_video = tmp_path / "long.mp4"
    write_video(long_video, (f for f, _ in iter_synthetic_clip(400, SIZE, seed=0)), fps=25)
    (tmp_path / "first.json").write_text(json.dumps({"keypoints": [[60, 48], [10, 10]]}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "siammae.cli.track", long_video, "--keypoints", tmp_path / "first.json",
           "--ckpt", ckpt, "--size", 96, "--out", out, "--quiet"]  # fmt: skip
    lines = out / "keypoints.jsonl"
    returncode, err = run_until_sigint(cmd, lambda: len(lines.read_text().splitlines()) if lines.exists() else 0)
    assert returncode == 130, err
    assert "Traceback" not in err and "interrupted: the keypoint track holds every frame so far" in err
    track = read_track(out)
    n = len(track["frames"])
    assert track["status"] == "interrupted" and 10 <= n < 400
    assert [f["index"] for f in track["frames"]] == list(range(n))
    assert [json.loads(line) for line in lines.read_text().splitlines()] == track["frames"]
    assert sorted(p.name for p in out.iterdir()) == ["keypoints.json", "keypoints.jsonl"]
