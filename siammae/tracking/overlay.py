"""Drawn over frames for ``--overlay``: masks (each object tinted in its DAVIS colour and outlined) or keypoints
(a dot per visible point, in the DAVIS colour of its number, ringed in white)."""

from __future__ import annotations

import numpy as np

from siammae.data.palette import davis_palette


def boundaries(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: pixels of an object whose 4-neighbourhood holds another id, thickened to ``width`` pixels."""
    edge = np.zeros(ids.shape, dtype=bool)
    diff_v = ids[1:, :] != ids[:-1, :]  # (H-1, W): the pixel below differs
    diff_h = ids[:, 1:] != ids[:, :-1]  # (H, W-1): the pixel to the right differs
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    for _ in range(width - 1):  # grow by one pixel per step (4-neighbourhood)
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge & (ids > 0)  # outline on the object side only


def overlay_masks(rgb: np.ndarray, ids: np.ndarray, alpha: float = 0.45, outline: int | None = None) -> np.ndarray:
    """Blend each object's DAVIS colour into ``rgb`` (H, W, 3) uint8 with weight ``alpha`` and draw its outline.

    ``outline``: line width in pixels (default: about 1/240 of the short side, at least 1); 0 draws none.
    """
    if rgb.shape[:2] != ids.shape:
        raise ValueError(f"frame {rgb.shape[:2]} and mask {ids.shape} differ in size")
    colours = davis_palette()[ids]  # (H, W, 3)
    inside = (ids > 0)[..., None]
    out = np.where(inside, rgb * (1.0 - alpha) + colours * alpha, rgb).astype(np.uint8)
    width = max(1, min(ids.shape) // 240) if outline is None else outline
    if width > 0:
        edge = boundaries(ids, width)
        out[edge] = colours[edge]
    return out


def draw_keypoints(rgb: np.ndarray, xy: np.ndarray, radius: int | None = None) -> np.ndarray:
    """Draw keypoint j of ``xy`` [J, 2] ((x, y) pixels, NaN rows not drawn) as a dot in DAVIS colour ``j + 1``
    with a one-pixel white ring (the DAVIS colours are dark), on a copy of ``rgb`` (H, W, 3) uint8.

    ``radius``: of the dot in pixels (default: about 1/120 of the short side, at least 2).
    """
    H, W = rgb.shape[:2]
    r = max(2, round(min(H, W) / 120)) if radius is None else radius
    colours = davis_palette()
    out = rgb.copy()
    for j, (x, y) in enumerate(np.asarray(xy, dtype=np.float64).reshape(-1, 2)):
        if np.isnan(x) or np.isnan(y):
            continue
        cx, cy = round(x), round(y)
        y0, y1, x0, x1 = max(0, cy - r - 1), min(H, cy + r + 2), max(0, cx - r - 1), min(W, cx + r + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2  # (h, w) squared distance to the dot's centre pixel
        region = out[y0:y1, x0:x1]
        region[d2 <= (r + 1) ** 2] = 255  # the ring, under the dot
        region[d2 <= r**2] = colours[1 + j % 255]
    return out
