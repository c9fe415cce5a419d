"""Indexed PNG label maps: reading ids whatever the palette, writing with the DAVIS / PASCAL VOC palette."""

from pathlib import Path

import numpy as np
from PIL import Image

from siammae.errors import InputError
from siammae.io import atomic_write


def voc_palette(n: int = 256) -> np.ndarray:
    """[n, 3] uint8 colours of the PASCAL VOC colour map, which the DAVIS and VIP masks use.

    The bits of an id are spread over the channels from the most significant bit down: bit 3k of the id goes to
    bit 7-k of red, bit 3k+1 to green, bit 3k+2 to blue (id 1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0)).
    """
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * k + channel)) & 1) << (7 - k)
    return palette.astype(np.uint8)


_PALETTE = voc_palette().ravel().tolist()


def read_index_png(path: Path) -> np.ndarray:
    """An indexed (mode P) or greyscale (mode L / 1) PNG -> [H, W] uint8 ids (the palette is ignored)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1"):
                raise InputError(f"{path} is a mode {im.mode} image; label maps must be indexed (P) or greyscale")
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as err:
        raise InputError(f"{path} cannot be read as a label map ({err})") from None


def write_index_png(path: Path, ids: np.ndarray) -> None:
    """Write [H, W] ids (0..255) as an indexed PNG with the VOC palette, atomically."""
    if ids.min() < 0 or ids.max() > 255:
        raise ValueError(f"ids must be in 0..255 to fit an indexed PNG, got {ids.min()}..{ids.max()}")
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    im.putpalette(_PALETTE)
    with atomic_write(path) as tmp:
        im.save(tmp, format="PNG")
