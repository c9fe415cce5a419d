"""VIP mIoU, JHMDB PCK and the keypoint <-> heatmap conversions, on hand-computed cases."""

import json
import math

import numpy as np
import pytest
import torch

from siammae.data.keypoints import read_keypoints, write_keypoint_track
from siammae.errors import InputError
from siammae.evaluation.metrics.jhmdb import normalized_distances, pck
from siammae.evaluation.metrics.vip import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy
from siammae.propagation.heatmaps import draw_gaussian, heatmaps_to_keypoints, keypoints_to_heatmaps

# ---------------------------------------------------------------- VIP


def test_confusion_matrix_and_miou_hand_computed():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 0]])
    hist = confusion_matrix(gt, pred, num_classes=4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2], expected[2, 0] = 2, 1, 2, 1, 1
    np.testing.assert_array_equal(hist, expected)  # the 255 pixel is ignored
    # IoU: class 0: 2 / (3 + 3 - 2); class 1: 2 / (2 + 3 - 2); class 2: 1 / 2; class 3 absent -> NaN.
    iou = per_class_iou(hist)
    np.testing.assert_allclose(iou[:3], [2 / 4, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert mean_iou(hist) == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(hist) == pytest.approx(5 / 7)


def test_miou_sums_frames_before_dividing():
    # Frame 1: class 1 perfect (1 pixel); frame 2: class 1 predicted on 3 background pixels. Summed:
    # class 1 IoU = 1 / 4, class 0 IoU = 1 / 4 (tp 1, gt 4, pred 1); per-frame averaging would differ.
    a = np.array([[1, 0]]), np.array([[1, 0]])
    b = np.array([[0, 0, 0, 0]]), np.array([[1, 1, 1, 0]])
    hist = confusion_matrix(*a, num_classes=2) + confusion_matrix(*b, num_classes=2)
    np.testing.assert_allclose(per_class_iou(hist), [2 / 5, 1 / 4])
    perfect = confusion_matrix(np.arange(20).reshape(4, 5), np.arange(20).reshape(4, 5))
    assert mean_iou(perfect) == 1.0


def test_confusion_matrix_rejects_unknown_classes():
    with pytest.raises(ValueError, match="class 20; valid classes are 0..19"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 20))
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))


# ---------------------------------------------------------------- JHMDB


def _pose(T=3):
    # Two joints spanning a 30 x 40 box: diagonal 50, person scale 0.6 * 50 = 30 pixels.
    return np.tile(np.array([[10.0, 20.0], [40.0, 60.0]]), (T, 1, 1))


def test_pck_hand_computed():
    gt = _pose()
    pred = gt.copy()
    pred[:, 0] += [3.0, 4.0]  # joint 0 off by 5 px = 1/6 of the scale: wrong at 0.1, right at 0.2
    pred[:, 1] += [3.0, 0.0]  # joint 1 off by 3 px = exactly 0.1: right at 0.1 (CRW's <=)
    pred[0] += 100.0  # frame 0 is given, never scored
    dist = normalized_distances(pred, gt)
    assert dist.shape == (2, 2)
    np.testing.assert_allclose(dist, [[1 / 6, 0.1], [1 / 6, 0.1]])
    assert pck(dist) == {0.1: pytest.approx(0.5), 0.2: pytest.approx(1.0)}
    assert pck(normalized_distances(gt, gt)) == {0.1: 1.0, 0.2: 1.0}


def test_pck_averages_joint_types_and_skips_invisible_predictions():
    gt = np.concatenate([_pose(T=3), np.full((3, 1, 2), 30.0)], axis=1)  # joint 2 inside the box
    pred = gt.copy()
    pred[2, 2] += 20.0  # joint 2 wrong in frame 2
    visible = np.ones((3, 3), dtype=bool)
    visible[1, 2] = False  # ... and vanished in frame 1: scored 0 of 1; joints 0 and 1 scored 2 of 2
    dist = normalized_distances(pred, gt, visible)
    assert np.isnan(dist[0, 2]) and np.isfinite(dist[1]).all()
    assert pck(dist)[0.1] == pytest.approx((1.0 + 1.0 + 0.0) / 3)  # not the pooled 4/5
    # The box is taken over the visible joints only: without joint 1, frame 1 has a 20 x 10 box.
    visible[1] = [True, False, True]
    shifted = normalized_distances(gt + [6.0, 0.0], gt, visible)
    assert shifted[0, 0] == pytest.approx(6 / (0.6 * math.hypot(20, 10)))
    assert shifted[1, 0] == pytest.approx(6 / (0.6 * math.hypot(30, 40)))
    # A lone joint has a zero box: never correct, but counted.
    lone = normalized_distances(pred[:, :1], gt[:, :1])
    assert np.isinf(lone).all() and pck(lone)[0.2] == 0.0


# ---------------------------------------------------------------- keypoints <-> heatmaps


def test_draw_gaussian_crw_window():
    hm = np.zeros((10, 10))
    draw_gaussian(hm, (5.3, 4.0))  # sigma 0.5: 4x4 patch, peak at int(c - 1.5) + 2 = (5, 4)
    assert hm[4, 5] == 1.0
    assert hm[4, 4] == pytest.approx(math.exp(-2)) and hm[4, 6] == pytest.approx(math.exp(-2))
    assert hm[3, 4] == pytest.approx(math.exp(-4))
    assert hm[4, 3] == pytest.approx(math.exp(-8)) and hm[4, 7] == 0.0
    assert np.count_nonzero(hm) == 16 and hm[2:6, 3:7].all()
    edge = np.zeros((4, 4))
    draw_gaussian(edge, (0.2, 0.2))  # int() truncates towards zero: the peak moves in to (1, 1), as in CRW
    assert edge[1, 1] == 1.0 and edge[0, 0] == pytest.approx(math.exp(-4))
    outside = np.zeros((4, 4))
    draw_gaussian(outside, (9.0, 1.0))
    assert not outside.any()


def test_keypoints_to_heatmaps_layout():
    # 64x48 image on an 8x6 grid (stride 8): pixel (20, 12) is cell (2.5, 1.5); the peak is at
    # x = int(2.5 - 1.5) + 2 = 3, y = int(1.5 - 1.5) + 2 = 2.
    maps = keypoints_to_heatmaps(np.array([[20.0, 12.0], [np.nan, np.nan]]), (48, 64), (6, 8))
    assert maps.shape == (3, 6, 8) and maps.dtype == torch.float32
    assert maps[1, 2, 3] == 1.0
    assert not maps[2].any()  # a point not given leaves its channel empty
    np.testing.assert_array_equal(maps[0].numpy(), (maps[1] == 0).numpy().astype(np.float32))


def test_heatmaps_to_keypoints_weighted_top3():
    maps = torch.zeros(3, 4, 6)
    maps[1, 2, 3], maps[1, 2, 4], maps[1, 3, 3], maps[1, 0, 0] = 1.0, 0.5, 0.25, 0.1
    xy, visible = heatmaps_to_keypoints(maps, image_size=(32, 48))  # 8 pixels per cell
    # top-3 cells (x, y): (3, 2) w 1, (4, 2) w .5, (3, 3) w .25, normalised by 1.75
    np.testing.assert_allclose(xy[0], [8 * 5.75 / 1.75, 8 * 3.75 / 1.75], rtol=1e-6)
    assert visible.tolist() == [True, False]
    assert np.isnan(xy[1]).all()
    # A lone peak round-trips through the heatmap to the pixel of its cell.
    one = keypoints_to_heatmaps(np.array([[24.0, 16.0]]), (32, 48), (4, 6))
    np.testing.assert_allclose(heatmaps_to_keypoints(one, (32, 48), topk=1)[0], [[24.0, 16.0]])


def test_read_keypoints_schemas(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"keypoints": [[1, 2], None, [3.5, 4]]}))
    kp = read_keypoints(plain, image_size=(10, 10))
    assert kp.names == ("0", "1", "2")
    np.testing.assert_array_equal(kp.xy[[0, 2]], [[1, 2], [3.5, 4]])
    assert np.isnan(kp.xy[1]).all()
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"keypoints": {"nose": [5, 6], "tail": [7, 8]}}))
    assert read_keypoints(named).names == ("nose", "tail")
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"keypoints": [[5, 6]], "names": ["nose"]}))
    assert read_keypoints(listed).names == ("nose",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"points": []}), 'needs a "keypoints" entry'),
        (json.dumps({"keypoints": []}), "holds no keypoint"),
        (json.dumps({"keypoints": [[1, 2, 3]]}), r"keypoint '0' is \[1, 2, 3\]"),
        (json.dumps({"keypoints": {"nose": "here"}}), "keypoint 'nose' is \"here\""),
        (json.dumps({"keypoints": [[1, 2]], "names": ["a", "b"]}), '"names" must be 1 strings'),
        (json.dumps({"keypoints": [[1, 2], [12, 3]]}), r"'1' at \(12, 3\) is outside the 10x10 frame"),
    ],
)
def test_read_keypoints_errors(tmp_path, content, message):
    path = tmp_path / "first.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_keypoints(path, image_size=(10, 10))
    with pytest.raises(InputError, match="does not exist"):
        read_keypoints(tmp_path / "missing.json")


def test_write_keypoint_track(tmp_path):
    frames = [
        ("00000", np.array([[1.0, 2.0], [np.nan, np.nan]])),
        ("00001", np.array([[1.234, 2.0], [3, 4]])),
    ]
    path = tmp_path / "out" / "track.json"
    write_keypoint_track(path, ("a", "b"), frames, image_size=(48, 64))
    data = json.loads(path.read_text())
    assert data["names"] == ["a", "b"] and (data["width"], data["height"]) == (64, 48)
    assert data["frames"][0] == {"frame": "00000", "index": 0, "keypoints": [[1.0, 2.0], None]}
    assert data["frames"][1]["keypoints"] == [[1.23, 2.0], [3.0, 4.0]]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
