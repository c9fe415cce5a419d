"""Keypoints as label maps: Gaussian heatmaps that propagate like masks, and back to points.

The JHMDB pose-propagation protocol (CRW ``data/jhmdb.py`` + ``test.py``, used by DINO-style evaluations and
SiamMAE): each joint becomes a heatmap on the feature grid, peak 1 with ``sigma = 0.5`` cells, drawn in a
``+/- 3 sigma`` window; channel 0 is the background (1 where no joint heatmap is nonzero). The maps propagate
through the video exactly like one-hot masks. A joint's position in a later frame is the weighted mean of the
``topk = 3`` highest cells of its propagated map, weights the map values, mapped back to pixels.

Coordinates are (x, y) pixels of the original frame, 0-based: (0, 0) is the centre of the top-left pixel
(JHMDB's 1-based ``pos_img`` minus 1). Pixel ``x`` is cell ``x * w / W`` on a ``w``-wide grid and back, as CRW
(``pos_img * new_w / ori_w / stride``, ``coord / feat_res * width``). The keypoint file formats are in
:mod:`siammae.data.keypoints`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# CRW / JHMDB protocol constants (docs/PROTOCOL.md, "Keypoints").
SIGMA = 0.5
TOPK = 3


def draw_gaussian(heatmap: np.ndarray, center: tuple[float, float], sigma: float = SIGMA) -> None:
    """Paste an unnormalised Gaussian (peak 1) centred near ``center`` = (x, y) cells into ``heatmap`` [h, w].

    Follows the pose-hg / CRW ``draw_labelmap``: a ``(6 sigma + 1)``-wide patch, whose peak sits at
    ``int(c - 3 sigma) + floor((6 sigma + 1) / 2)``, i.e. at the nearest cell for centres >= 3 sigma.
    ``int`` truncates towards zero, so near the top or left border the peak moves inwards (as in CRW). A
    patch entirely outside the grid draws nothing.
    """
    h, w = heatmap.shape
    size = 6 * sigma + 1
    x0, y0 = int(center[0] - 3 * sigma), int(center[1] - 3 * sigma)  # upper-left corner, truncated
    x1, y1 = int(center[0] + 3 * sigma + 1), int(center[1] + 3 * sigma + 1)  # lower-right, exclusive
    if x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
        return
    grid = np.arange(0, size, 1, dtype=np.float64)
    mid = size // 2
    patch = np.exp(-((grid[None, :] - mid) ** 2 + (grid[:, None] - mid) ** 2) / (2 * sigma**2))
    heatmap[max(0, y0) : min(y1, h), max(0, x0) : min(x1, w)] = patch[
        max(0, -y0) : min(y1, h) - y0, max(0, -x0) : min(x1, w) - x0
    ]


def keypoints_to_heatmaps(
    points: np.ndarray,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    sigma: float = SIGMA,
) -> torch.Tensor:
    """Keypoints -> [1 + J, h, w] float32 label maps on the feature grid; channel 0 is the background.

    points: [J, 2] (x, y) pixels of an image of ``image_size`` = (H, W); NaN rows are points not given (their
    channel stays zero). grid_size: (h, w) of the feature grid.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    (H, W), (h, w) = image_size, grid_size
    maps = np.zeros((len(points) + 1, h, w), dtype=np.float64)
    for j, (x, y) in enumerate(points):
        if not (math.isnan(x) or math.isnan(y)):
            draw_gaussian(maps[j + 1], (x * w / W, y * h / H), sigma)
    maps[0] = maps[1:].sum(0) == 0  # background where no joint reaches (CRW: lbls.sum(-1) == 0)
    return torch.from_numpy(maps.astype(np.float32))


def heatmaps_to_keypoints(
    heatmaps: torch.Tensor, image_size: tuple[int, int], topk: int = TOPK
) -> tuple[np.ndarray, np.ndarray]:
    """[1 + J, h, w] propagated label maps -> ([J, 2] (x, y) pixels, [J] visible).

    Per joint: the ``topk`` highest cells, weighted by their values (normalised to sum 1), averaged in cell
    coordinates and scaled to the ``image_size`` = (H, W) pixels. A joint whose map is all zero is not visible
    (NaN coordinates).
    """
    C, h, w = heatmaps.shape
    H, W = image_size
    joints = heatmaps[1:].detach().float().reshape(C - 1, h * w).cpu()  # [J, h*w]
    vals, ids = joints.topk(min(topk, h * w), dim=1)  # [J, k]
    visible = joints.sum(1) > 0
    weights = vals / vals.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    x = ((ids % w).float() * weights).sum(1) * (W / w)
    y = (torch.div(ids, w, rounding_mode="floor").float() * weights).sum(1) * (H / h)
    xy = torch.stack([x, y], dim=1).double().numpy()
    xy[~visible.numpy()] = np.nan
    return xy, visible.numpy()
