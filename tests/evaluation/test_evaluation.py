"""Benchmark layouts and scoring of results folders: synthetic DAVIS / VIP / JHMDB with known answers, the
official OSVOS numbers, and clear errors for bad layouts."""

import csv
import json
import math

import numpy as np
import pytest
import scipy.io
from PIL import Image

from siammae.data.keypoints import write_keypoint_track
from siammae.data.palette import davis_palette
from siammae.errors import InputError
from siammae.evaluation import davis, jhmdb, vip
from siammae.evaluation.metrics.davis import GLOBAL_COLUMNS
from siammae.evaluation.png import read_index_png, write_index_png
from siammae.evaluation.results import ResultsDir

H, W = 40, 48  # diagonal 62.5: F tolerance ceil(0.008 * 62.5) = 1 pixel


def _save_jpg(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _davis_frame() -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[5:15, 5:15] = 1  # 10x10 object 1
    ids[22:32, 30:40] = 2  # 10x10 object 2
    return ids


def make_davis(root, names=("seq-a", "seq-b"), frames=5, year="2017"):
    for name in names:
        for t in range(frames):
            _save_jpg(root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
            write_index_png(root / "Annotations/480p" / name / f"{t:05d}.png", _davis_frame())
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "val.txt").write_text("\n".join(names) + "\n")
    return root


def copy_predictions(root, out, names=("seq-a", "seq-b"), frames=5):
    for name in names:
        for t in range(frames):
            ids = read_index_png(root / "Annotations/480p" / name / f"{t:05d}.png")
            write_index_png(out / name / f"{t:05d}.png", ids)
    return out


# ---------------------------------------------------------------- DAVIS


def test_davis_perfect_and_shifted(tmp_path):
    root = make_davis(tmp_path / "DAVIS")
    results = copy_predictions(root, tmp_path / "perfect")
    doc = davis.Davis().score_results(root, results, out=tmp_path / "out-perfect", progress=False)
    assert tuple(doc.metrics) == GLOBAL_COLUMNS
    assert doc.metrics["J&F-Mean"] == doc.metrics["J-Recall"] == doc.metrics["F-Mean"] == 1.0
    assert doc.metrics["J-Decay"] == 0.0
    # Object 1 of seq-a moved 3 px right in the scored frames 1..3: J = 70/130, F = 20/40 (test_metrics_davis).
    for t in (1, 2, 3):
        ids = _davis_frame()
        ids[ids == 1] = 0
        ids[5:15, 8:18] = 1
        write_index_png(results / "seq-a" / f"{t:05d}.png", ids)
    out = tmp_path / "out-shifted"
    doc = davis.Davis().score_results(root, results, out=out, progress=False)
    j_mean = (7 / 13 + 3) / 4  # four objects, one at 7/13
    f_mean = (0.5 + 3) / 4
    assert doc.metrics["J-Mean"] == pytest.approx(j_mean)
    assert doc.metrics["F-Mean"] == pytest.approx(f_mean)
    assert doc.metrics["J&F-Mean"] == pytest.approx((j_mean + f_mean) / 2)
    assert doc.metrics["J-Recall"] == 1.0  # 7/13 > 0.5
    assert doc.metrics["F-Recall"] == pytest.approx(3 / 4)  # 0.5 is not > 0.5
    # Official outputs: per-object rows <sequence>_<id>, global CSV in the official order, JSON and Markdown.
    with open(out / "per-sequence_results-val.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["Sequence"] for r in rows] == ["seq-a_1", "seq-a_2", "seq-b_1", "seq-b_2"]
    assert float(rows[0]["J-Mean"]) == pytest.approx(7 / 13, abs=1e-6)
    with open(out / "global_results-val.csv") as f:
        header = next(csv.reader(f))
    assert tuple(header) == GLOBAL_COLUMNS
    saved = json.loads((out / "results.json").read_text())
    assert saved == doc.to_json() and doc.out == str(out)  # the typed result is the file, field for field
    assert saved["global"]["J&F-Mean"] == pytest.approx(doc.metrics["J&F-Mean"])
    assert saved["settings"]["year"] == "2017"
    assert "| J&F-Mean | J-Mean |" in (out / "results.md").read_text()


def test_davis_2016_merges_ids(tmp_path):
    root = make_davis(tmp_path / "DAVIS", year="2016")
    # 2016: any nonzero is the object; a prediction that swaps ids 1 and 2 is still perfect.
    for name in ("seq-a", "seq-b"):
        for t in range(5):
            ids = _davis_frame()
            write_index_png(tmp_path / "res" / name / f"{t:05d}.png", np.where(ids > 0, 3 - ids, 0))
    doc = davis.Davis(year="2016").score_results(root, tmp_path / "res", out=tmp_path / "out", progress=False)
    assert doc.metrics["J&F-Mean"] == 1.0
    assert len(doc.per_sequence) == 2  # one object per sequence


def test_davis_bad_layouts(tmp_path):
    root = make_davis(tmp_path / "DAVIS")
    results = copy_predictions(root, tmp_path / "res")
    with pytest.raises(InputError, match=r"split list .*ImageSets/2017/test-dev.txt does not exist \(found: val\)"):
        davis.Davis(split="test-dev").score_results(root, results, progress=False)
    with pytest.raises(InputError, match="DAVIS year '2018'"):
        davis.list_sequences(root, "2018", "val")
    (root / "Annotations/480p/seq-b/00002.png").unlink()
    with pytest.raises(InputError, match=r"seq-b: frame 00002.jpg has no annotation .*\(1 of 5 frames"):
        davis.Davis().score_results(root, results, out=tmp_path / "o", progress=False)
    write_index_png(root / "Annotations/480p/seq-b/00002.png", _davis_frame())
    ids = _davis_frame()
    ids[0, 0] = 3
    write_index_png(results / "seq-a/00002.png", ids)
    with pytest.raises(InputError, match=r"seq-a/00002.png holds object id 3 but the ground truth .* ids 1..2"):
        davis.Davis().score_results(root, results, out=tmp_path / "o", progress=False)
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(results / "seq-a/00002.png")
    with pytest.raises(InputError, match="mode RGB image"):
        davis.Davis().score_results(root, results, out=tmp_path / "o", progress=False)
    write_index_png(results / "seq-a/00002.png", np.zeros((H, W + 1), dtype=np.uint8))
    with pytest.raises(InputError, match="is 49x40 but the ground truth is 48x40"):
        davis.Davis().score_results(root, results, out=tmp_path / "o", progress=False)
    (results / "seq-a/00002.png").unlink()
    with pytest.raises(InputError, match=r"prediction .*seq-a/00002.png is missing"):
        davis.Davis().score_results(root, results, out=tmp_path / "o", progress=False)
    other = make_davis(tmp_path / "D2", names=("seq-c",))
    with pytest.raises(InputError, match="has no predictions for sequence seq-c"):
        davis.Davis().score_results(other, results, out=tmp_path / "o", progress=False)


def test_png_palette_and_modes(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_index_png(tmp_path / "m.png", ids)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert np.array(im.getpalette()[:9]).tolist() == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    np.testing.assert_array_equal(read_index_png(tmp_path / "m.png"), ids)
    assert davis_palette()[5].tolist() == [128, 0, 128]
    Image.fromarray(ids * 20).save(tmp_path / "l.png")  # greyscale masks keep their values
    np.testing.assert_array_equal(read_index_png(tmp_path / "l.png"), ids * 20)


# ---------------------------------------------------------------- results folder


def test_results_dir_resume_and_settings(tmp_path):
    out = tmp_path / "out"
    results = ResultsDir(out, {"benchmark": "davis", "topk": 7})
    calls = []
    compute = lambda name: calls.append(name) or {"name": name, "score": math.nan}
    records = results.collect(["a", "b"], compute, progress=False)
    assert records == [{"name": "a", "score": None}, {"name": "b", "score": None}]  # NaN stored as null
    assert calls == ["a", "b"]
    again = ResultsDir(out, {"benchmark": "davis", "topk": 7, "root": "/moved/DAVIS"})  # a new place is fine
    again.collect(["a", "b", "c"], compute, progress=False)
    assert calls == ["a", "b", "c"]  # a and b were read back
    assert json.loads((out / "settings.json").read_text())["root"] == "/moved/DAVIS"
    with pytest.raises(InputError, match=r"other settings \(differing in: topk\); pass --overwrite"):
        ResultsDir(out, {"benchmark": "davis", "topk": 5})
    ResultsDir(out, {"benchmark": "davis", "topk": 5}, overwrite=True).collect(["a"], compute, progress=False)
    assert calls == ["a", "b", "c", "a"]
    assert json.loads((out / "settings.json").read_text())["topk"] == 5
    assert not (out / "scores/b.json").exists()


# ---------------------------------------------------------------- VIP


def make_vip(root, frames=3):
    gt = np.zeros((16, 16), dtype=np.uint8)
    gt[2:8, 2:8] = 2  # hair
    gt[8:14, 4:12] = 4  # upper-clothes
    for t in range(frames):
        _save_jpg(root / "Images/videos7" / f"{t:012d}.jpg", 16, 16)
        write_index_png(root / "Annotations/Category_ids/videos7" / f"{t:012d}.png", gt)
    (root / "lists").mkdir(parents=True)
    (root / "lists/val_videos.txt").write_text("videos7\n")
    return gt


def test_vip_perfect_and_wrong_part(tmp_path):
    root = tmp_path / "VIP"
    gt = make_vip(root)
    for t in range(3):
        # Predictions at half resolution: nearest resizing gives back the 2x2-blocky ground truth.
        write_index_png(tmp_path / "res/videos7" / f"{t:012d}.png", gt[::2, ::2])
    doc = vip.Vip().score_results(root, tmp_path / "res", out=tmp_path / "o1", progress=False)
    assert doc.metrics["mIoU"] == 1.0 and doc.metrics["Pixel-Acc"] == 1.0
    assert doc.extra["per_class_iou"]["hair"] == 1.0 and doc.extra["per_class_iou"]["hat"] is None  # absent class
    wrong = gt.copy()
    wrong[gt == 4] = 5  # clothes predicted as dress in one of three frames
    write_index_png(tmp_path / "res/videos7/000000000001.png", wrong)
    doc = vip.Vip().score_results(root, tmp_path / "res", out=tmp_path / "o2", progress=False)
    # Summed over frames: clothes 96 px/frame, tp 2 * 96, union 3 * 96 -> 2/3; dress 0/96 -> 0; bg, hair 1.
    assert doc.metrics["mIoU"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    (tmp_path / "res/videos7/000000000002.png").unlink()
    with pytest.raises(InputError, match=r"000000000002.png is missing"):
        vip.Vip().score_results(root, tmp_path / "res", out=tmp_path / "o3", progress=False)
    write_index_png(tmp_path / "res/videos7/000000000002.png", np.full((16, 16), 20, dtype=np.uint8))
    with pytest.raises(InputError, match=r"holds class 20; VIP classes are 0..19"):
        vip.Vip().score_results(root, tmp_path / "res", out=tmp_path / "o3", progress=False)
    with pytest.raises(InputError, match=r"lists/test_videos.txt does not exist"):
        vip.list_videos(root, "test")


# ---------------------------------------------------------------- JHMDB


def make_jhmdb(root, frames=4):
    rng = np.random.default_rng(0)
    joints = np.zeros((frames, 15, 2))
    joints[:, :, 0] = rng.uniform(100, 130, (frames, 15))
    joints[:, :, 1] = rng.uniform(50, 90, (frames, 15))
    joints[:, 0] = [100, 50]  # the box corners: 30 x 40, scale 0.6 * 50 = 30 px
    joints[:, 1] = [130, 90]
    for t in range(frames):
        _save_jpg(root / "Rename_Images/wave/clip_a" / f"{t + 1:05d}.png", 240, 320)
    (root / "joint_positions/wave/clip_a").mkdir(parents=True)
    pos_img = np.transpose(joints + 1.0, (2, 1, 0))  # 2 x 15 x T, 1-based
    scipy.io.savemat(root / "joint_positions/wave/clip_a/joint_positions.mat", {"pos_img": pos_img})
    (root / "splits").mkdir(parents=True)
    (root / "splits/wave_test_split1.txt").write_text("clip_a.avi 2\nclip_b.avi 1\n")
    return joints


def test_jhmdb_perfect_and_shifted(tmp_path):
    root = tmp_path / "JHMDB"
    joints = make_jhmdb(root)
    assert jhmdb.list_videos(root) == ["wave/clip_a"]  # clip_b is a training video
    path = tmp_path / "res/wave/clip_a.json"
    track = lambda xy: [(f"{t + 1:05d}", p) for t, p in enumerate(xy)]
    write_keypoint_track(path, ("j",) * 15, track(joints), (240, 320))
    doc = jhmdb.Jhmdb().score_results(root, tmp_path / "res", out=tmp_path / "o", progress=False)
    assert doc.metrics == {"PCK@0.1": 1.0, "PCK@0.2": 1.0}
    pred = joints.copy()
    pred[:, 2] += [3.0, 4.0]  # 5 px = 1/6 of the scale: wrong at 0.1, right at 0.2
    pred[1:, 3] = np.nan  # joint 3 vanished: not scored
    pred[0] = 0.0  # frame 0 is never scored
    write_keypoint_track(path, ("j",) * 15, track(pred), (240, 320))
    doc = jhmdb.Jhmdb().score_results(root, tmp_path / "res", out=tmp_path / "o", progress=False)
    assert doc.metrics["PCK@0.1"] == pytest.approx(13 / 14)
    assert doc.metrics["PCK@0.2"] == 1.0
    data = json.loads(path.read_text())
    data["frames"][2]["keypoints"][4] = "here"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r'frame 2 keypoint 4 is "here", not \[x, y\] or null'):
        jhmdb.Jhmdb().score_results(root, tmp_path / "res", out=tmp_path / "o", progress=False)
    write_keypoint_track(path, ("j",) * 15, track(pred[:3]), (240, 320))
    with pytest.raises(InputError, match="has 3 frames, the video has 4"):
        jhmdb.Jhmdb().score_results(root, tmp_path / "res", out=tmp_path / "o", progress=False)
    (root / "Rename_Images/wave/clip_a/00004.png").unlink()
    with pytest.raises(InputError, match="has 4 frames of joints, .* has 3"):
        jhmdb.load_video(root, "wave/clip_a")
    with pytest.raises(InputError, match="_test_split2.txt do not exist"):
        jhmdb.list_videos(root, split=2)
