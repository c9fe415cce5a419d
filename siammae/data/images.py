"""Opening one image file (a frame or a mask) the way every reader in siammae does: upright, and bounded.

- **Orientation.** A JPEG from a phone often stores its pixels sideways with an EXIF ``Orientation`` tag (274) that
  tells viewers to rotate it. ``cv2.imread``, which DINO's and CRW's evaluation code decode with, applies that tag
  by default (OpenCV >= 3.1; ``IMREAD_IGNORE_ORIENTATION`` turns it off), as image viewers and mask editors do;
  PIL's ``Image.open`` does not. :func:`upright` applies it (``PIL.ImageOps.exif_transpose``), so a frame is the
  picture a user sees and draws a mask on, and PIL and ``cv2.imread`` decode the same array
  (``tests/data/test_images.py``). Files without the tag (DAVIS, JHMDB, VIP, every PNG we write) are unchanged.
- **Size.** Pillow refuses to open an image whose header claims more than ``2 * Image.MAX_IMAGE_PIXELS`` pixels
  (179 megapixels by default) with a ``DecompressionBombError``, which is neither an ``OSError`` nor one line.
  :func:`open_image` turns it into the caller's error type naming the file and the size its header claims.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from PIL import Image, ImageOps

ORIENTATION = 0x0112  # EXIF tag 274; 1 = upright, 2..8 = mirrored and / or rotated


def upright(im: Image.Image) -> Image.Image:
    """``im`` as displayed: rotated / mirrored by its EXIF orientation tag; ``im`` itself when it has none (no copy)."""
    if im.getexif().get(ORIENTATION, 1) in (1, None):
        return im
    out = ImageOps.exif_transpose(im)
    out.format = im.format  # kept: readers refuse JPEG masks by their format
    return out


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) of ``im`` as displayed, from its header alone (orientations 5..8 swap the sides)."""
    w, h = im.size
    return (w, h) if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else (h, w)


def _header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) a file's header claims, read by the format's Pillow plugin without the pixel-count check
    (the check is what failed). None when no plugin reads it."""
    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:  # the registry Image.open walks
                factory, accept = Image.OPEN[fmt]
                if accept is not None and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, str(path)).size
                except (OSError, SyntaxError, ValueError, IndexError, TypeError, EOFError):
                    continue
    except OSError:
        return None
    return None


def too_large_message(path: str | os.PathLike, err: Exception) -> str:
    """The one-line message for an image over Pillow's pixel limit: the file, the size it claims, the limit."""
    size = _header_size(path)
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    claimed = f"{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:,.0f} megapixels)" if size else str(err)
    return (
        f"{path}: image is {claimed}, over the {limit / 1e6:,.0f}-megapixel limit of the image decoder (a corrupt "
        "header or a decompression bomb; frames and masks that large must be downscaled first)"
    )


@contextlib.contextmanager
def open_image(path: str | os.PathLike, error: type[Exception]) -> Iterator[Image.Image]:
    """``Image.open(path)`` as a context manager; an image over the pixel limit raises ``error`` (one line naming
    the file and its size). Other decoding errors pass through for the caller to word."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise error(too_large_message(path, e)) from None
    with im:
        yield im
