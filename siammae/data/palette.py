"""The DAVIS palette, computed rather than downloaded.

DAVIS (and PASCAL VOC before it) colour id ``i`` by spreading the bits of ``i`` over the three channels, most
significant first: bit 0 of ``i`` goes to bit 7 of red, bit 1 to bit 7 of green, bit 2 to bit 7 of blue, bit 3 to
bit 6 of red, and so on. This is the ``labelcolormap`` / ``color_map`` function of the PASCAL VOC devkit that the
DAVIS toolkit's ``mask_palette.png`` was made with (id 1 -> (128, 0, 0), 2 -> (0, 128, 0), 255 -> (224, 224, 192)).
DINO's evaluation script downloads that file at run time; here it is a 256-line function of the id.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal.flags.writeable = False
    return pal


def davis_palette() -> np.ndarray:
    """(256, 3) uint8 RGB colours of ids 0..255 (read-only; id 0, the background, is black)."""
    return _palette()


def davis_palette_flat() -> list[int]:
    """The palette as the flat ``[r0, g0, b0, r1, ...]`` list that ``PIL.Image.putpalette`` takes."""
    return _palette().reshape(-1).tolist()
