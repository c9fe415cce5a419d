"""Masks drawn over frames for ``--overlay``: each object tinted in its DAVIS colour and outlined."""

from __future__ import annotations

import numpy as np

from siammae.tracking.palette import davis_palette


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
