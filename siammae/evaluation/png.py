"""Indexed PNG label maps for evaluation: strict reading of ids (palette ignored); writing is the tracker's
``write_mask`` (the DAVIS palette, atomic), re-exported here as ``write_index_png``."""

from pathlib import Path

import numpy as np

from siammae.data.images import open_image
from siammae.data.masks import write_mask as write_index_png
from siammae.errors import InputError

__all__ = ["read_index_png", "write_index_png"]


def read_index_png(path: Path) -> np.ndarray:
    """An indexed (mode P) or greyscale (mode L / 1) PNG -> [H, W] uint8 ids (the palette is ignored). The pixels
    as stored: the official evaluators read label maps with PIL, which ignores an EXIF orientation tag."""
    try:
        with open_image(path, InputError) as im:
            if im.mode not in ("P", "L", "1"):
                raise InputError(f"{path} is a mode {im.mode} image; label maps must be indexed (P) or greyscale")
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as err:
        raise InputError(f"{path} cannot be read as a label map ({err})") from None
