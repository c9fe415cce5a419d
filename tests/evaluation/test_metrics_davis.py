"""DAVIS J and F against the official davis2017-evaluation numbers and hand-computed cases."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from siammae.evaluation.metrics.davis import (
    GLOBAL_COLUMNS,
    SequenceScores,
    boundary_tolerance,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    dilate_disk,
    disk,
    evaluate_sequence,
    f_measure,
    global_results,
    seg2bmap,
)


def _square(size=40, top=5, left=5, side=10):
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.mark.parametrize("data", ["fixture_data", "shared_data"])  # 6 frames that ship, all of DAVIS-2016 val
def test_official_osvos_scores_per_frame(data, request):
    """Every per-frame J and F equals the official code's (OSVOS on DAVIS-2016 val, ids > 0 merged)."""
    root = request.getfixturevalue(data) / "davis2016"
    official = json.loads((root / "osvos_official_scores.json").read_text())
    for seq, ref in official["sequences"].items():
        frames = sorted(ref["per_frame"])
        gt = np.stack([np.array(Image.open(root / "Annotations/480p" / seq / f)) > 0 for f in frames])
        pred = np.stack([np.array(Image.open(root / "osvos_predictions" / seq / f)) > 0 for f in frames])
        J = db_eval_iou(gt, pred)
        F = db_eval_boundary(gt, pred)
        np.testing.assert_allclose(J, [ref["per_frame"][f]["J"] for f in frames], rtol=0, atol=1e-6)
        np.testing.assert_allclose(F, [ref["per_frame"][f]["F"] for f in frames], rtol=0, atol=1e-6)
        scores = SequenceScores(seq, frames[1:-1], J[None, 1:-1], F[None, 1:-1])
        (stats,) = scores.object_statistics()
        assert stats["J-Mean"] == pytest.approx(ref["J_mean"], abs=1e-6)
        assert stats["F-Mean"] == pytest.approx(ref["F_mean"], abs=1e-6)
        assert (stats["J-Mean"] + stats["F-Mean"]) / 2 == pytest.approx(ref["JF_mean"], abs=1e-6)


def test_iou_hand_computed():
    gt = _square()
    assert db_eval_iou(gt, gt) == 1.0
    assert db_eval_iou(gt, np.roll(gt, 3, axis=1)) == pytest.approx(70 / 130)  # 10x7 overlap, 10x13 union
    assert db_eval_iou(gt, np.zeros_like(gt)) == 0.0
    empty = np.zeros_like(gt)
    assert db_eval_iou(empty, empty) == 1.0  # empty union scores 1
    void = np.zeros_like(gt)
    void[:, 15:] = True  # hide the part of the shifted square that is off the ground truth
    assert db_eval_iou(gt, np.roll(gt, 3, axis=1), void) == pytest.approx(70 / 100)


def test_seg2bmap_is_the_ring_of_mixed_2x2_blocks():
    # A pixel is on the boundary when the 2x2 block it starts is not uniform: for rows/cols 5..14 that is the
    # 11x11 square at 4..14 minus the 9x9 interior at 5..13, 40 pixels.
    b = seg2bmap(_square())
    expected = np.zeros_like(b)
    expected[4:15, 4:15] = True
    expected[5:14, 5:14] = False
    np.testing.assert_array_equal(b, expected)
    # Last row / column compare only east / south; the bottom-right pixel is never a boundary.
    full = np.ones((6, 7), dtype=bool)
    assert not seg2bmap(full).any()
    corner = np.zeros((4, 4), dtype=bool)
    corner[3, 3] = True
    assert not seg2bmap(corner)[3, 3]
    assert seg2bmap(corner)[2, 2] and seg2bmap(corner)[3, 2] and seg2bmap(corner)[2, 3]


def test_disk_matches_skimage_definition():
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    d8 = disk(8)
    assert d8.shape == (17, 17)
    assert d8.sum() == 197  # lattice points with x^2 + y^2 <= 64
    assert d8[8, 0] and d8[0, 8] and not d8[0, 0] and not d8[1, 3]


@pytest.mark.parametrize("radius", [1, 2, 3, 8])
def test_dilate_disk_equals_structuring_element_dilation(radius):
    rng = np.random.default_rng(radius)
    bmap = rng.random((37, 53)) < 0.01
    bmap[0, 0] = bmap[-1, 20] = True  # border pixels: outside the image counts as background
    ref = ndimage.binary_dilation(bmap, structure=disk(radius))
    np.testing.assert_array_equal(dilate_disk(bmap, radius), ref)
    assert not dilate_disk(np.zeros((5, 5), dtype=bool), radius).any()


def test_boundary_tolerance():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((40, 40)) == 1
    assert boundary_tolerance((480, 854), bound_th=3) == 3
    with pytest.raises(ValueError, match="whole number"):
        boundary_tolerance((480, 854), bound_th=2.5)


def test_boundary_f_hand_computed():
    gt = _square()  # 40x40 image: tolerance 1 pixel (a plus-shaped disk)
    assert f_measure(gt, gt) == 1.0
    # Shifted by one column, every boundary pixel is within one pixel of the other ring.
    assert f_measure(np.roll(gt, 1, axis=1), gt) == 1.0
    # Shifted by three: of the 40 ring pixels, 9 in each of the top and bottom rows and the top and bottom
    # pixels of the near column are within one pixel of the other ring: P = R = 20/40.
    assert f_measure(np.roll(gt, 3, axis=1), gt) == pytest.approx(0.5)
    empty = np.zeros_like(gt)
    assert f_measure(empty, empty) == 1.0
    assert f_measure(empty, gt) == 0.0 and f_measure(gt, empty) == 0.0
    # Frames stacked [T, H, W]: one score per frame.
    np.testing.assert_allclose(db_eval_boundary(np.stack([gt, gt]), np.stack([gt, empty])), [1.0, 0.0])


def test_db_statistics_hand_computed():
    # 8 frames: bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin frames 0..2, last 5..7.
    values = np.array([1.0, 1.0, 1.0, 0.6, 0.4, 0.0, 0.0, 0.3])
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(4.3 / 8)
    assert recall == pytest.approx(4 / 8)
    assert decay == pytest.approx(1.0 - 0.1)
    assert db_statistics(np.ones(3)) == (1.0, 1.0, 0.0)


def test_evaluate_sequence_and_global_table():
    gt_frame = np.zeros((40, 40), dtype=np.uint8)
    gt_frame[_square()] = 1
    gt_frame[_square(top=25, left=25, side=8)] = 2
    gt = np.stack([gt_frame] * 5)
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 is lost after the first frame ...
    pred[:2] = gt[:2]
    scores = evaluate_sequence("seq", [f"{t:05d}" for t in range(5)], gt, pred, num_objects=2)
    assert scores.J.shape == scores.F.shape == (2, 5)
    np.testing.assert_array_equal(scores.J[0], 1.0)
    np.testing.assert_array_equal(scores.J[1], [1, 1, 0, 0, 0])
    obj1, obj2 = scores.object_statistics()
    assert obj1["J-Mean"] == obj1["F-Mean"] == 1.0 and obj1["J-Decay"] == 0.0
    # 5 frames: bins [0, 1], [1, 2], [2, 3], [3, 4] -> decay = mean(1, 1) - mean(0, 0) = 1
    assert obj2["J-Mean"] == obj2["F-Mean"] == pytest.approx(0.4) and obj2["J-Recall"] == pytest.approx(0.4)
    assert obj2["J-Decay"] == obj2["F-Decay"] == 1.0
    perfect = evaluate_sequence("other", scores.frames, gt, gt, num_objects=2)
    table = global_results([scores, perfect])
    assert tuple(table) == GLOBAL_COLUMNS
    assert table["J-Mean"] == table["F-Mean"] == table["J&F-Mean"] == pytest.approx((1 + 0.4 + 1 + 1) / 4)
    assert table["J-Recall"] == pytest.approx(3.4 / 4)
    assert table["J-Decay"] == pytest.approx(1 / 4)
