"""JHMDB pose propagation: PCK, the percentage of correct keypoints (CRW ``eval_pck.py``).

For every frame but the first (whose keypoints are given) and every joint the prediction is visible for,
the distance to the ground truth is divided by ``0.6 x`` the diagonal of the bounding box of that frame's
ground-truth joints. A joint is correct at threshold ``a`` when that normalised distance is ``<= a`` (the
code's ``<=``; the papers write ``<``). PCK@a is the fraction of correct joints, computed per joint type
over all frames of all videos, then averaged over the 15 joint types.
"""

import numpy as np

# The joints of JHMDB's puppet model, in the order of ``pos_img``.
JOINT_NAMES = (
    "neck",
    "belly",
    "face",
    "right shoulder",
    "left shoulder",
    "right hip",
    "left hip",
    "right elbow",
    "left elbow",
    "right knee",
    "left knee",
    "right wrist",
    "left wrist",
    "right ankle",
    "left ankle",
)

# Reported thresholds (SiamMAE Table 1).
PCK_THRESHOLDS = (0.1, 0.2)


def normalized_distances(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Distances of predicted to ground-truth joints over the person scale, frame 0 skipped.

    pred, gt: [T, J, 2] (x, y) pixel coordinates. visible: optional [T, J] bool, False where the prediction
    has no joint (a vanished heatmap); those joints are left out of the box and of the score, as in CRW.
    Returns [T - 1, J] float64 with NaN for the joints left out.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must both be [T, J, 2]")
    visible = np.ones(gt.shape[:2], dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    pred, gt, visible = pred[1:], gt[1:], visible[1:]
    lo = np.where(visible[..., None], gt, np.inf).min(axis=1)  # [T-1, 2]
    hi = np.where(visible[..., None], gt, -np.inf).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 0.6 * np.linalg.norm(hi - lo, axis=-1)  # [T-1]
        out = np.linalg.norm(pred - gt, axis=-1) / scale[:, None]  # [T-1, J]
    # A degenerate box (all joints on one point) divides by zero: never correct, but still counted, as in CRW.
    out = np.where(np.isnan(out), np.inf, out)
    return np.where(visible, out, np.nan)


def pck(distances: np.ndarray, thresholds=PCK_THRESHOLDS) -> dict[float, float]:
    """PCK in [0, 1] per threshold from [N, J] normalised distances (NaN = not scored) of all frames.

    Per joint type the fraction of scored distances ``<= a``, then the mean over joint types that have any.
    """
    distances = np.asarray(distances, dtype=np.float64)
    scored = ~np.isnan(distances)
    counts = scored.sum(0)  # [J]
    if not np.any(counts):
        raise ValueError("no joint was scored")
    out = {}
    for a in thresholds:
        with np.errstate(invalid="ignore"):
            correct = (np.where(scored, distances, np.inf) <= a).sum(0)
        out[a] = float(np.mean(correct[counts > 0] / counts[counts > 0]))
    return out
