"""Image files as every reader opens them (siammae.data.images): upright by their EXIF orientation, as cv2.imread
decodes them, and an image over the decoder's pixel limit as one error naming the file and its size."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from siammae.data.images import ORIENTATION
from siammae.data.masks import mask_size, read_mask
from siammae.data.palette import davis_palette_flat
from siammae.data.video import open_video, read_image
from siammae.errors import InputError, VideoError


def _picture(h: int = 48, w: int = 80) -> np.ndarray:
    """Flat quadrants (JPEG keeps flat colours within a few levels), so any rotation or mirroring shows."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (200, 30, 30)
    rgb[: h // 2, w // 2 :] = (30, 200, 30)
    rgb[h // 2 :, : w // 2] = (30, 30, 200)
    rgb[h // 2 :, w // 2 :] = (220, 220, 40)
    return rgb


def _rotated_jpeg(path, orientation: int = 6) -> np.ndarray:
    """A JPEG whose pixels are ``_picture()`` stored with EXIF ``orientation``; returns the stored pixels."""
    rgb = _picture()
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    return np.asarray(Image.open(path).convert("RGB"))  # raw, as stored


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_decodes_upright_and_as_cv2_imread(tmp_path, orientation):
    raw = _rotated_jpeg(tmp_path / "f.jpg", orientation)
    got = read_image(tmp_path / "f.jpg")
    want = {3: np.rot90(raw, 2), 6: np.rot90(raw, -1), 8: np.rot90(raw, 1)}[orientation]  # 6: 90 deg clockwise
    assert np.array_equal(got, want)
    # cv2.imread (DINO's and CRW's decoder) applies the tag too: the two decoders give the same array
    assert np.array_equal(got, cv2.imread(str(tmp_path / "f.jpg"))[:, :, ::-1])
    # and a frame folder of such JPEGs streams upright, its size the displayed one
    (tmp_path / "v").mkdir()
    (tmp_path / "f.jpg").rename(tmp_path / "v/00000.jpg")
    src = open_video(tmp_path / "v")
    assert (src.height, src.width) == got.shape[:2]
    assert np.array_equal(next(iter(src)).rgb, got)


def test_untagged_images_are_unchanged(tmp_path):
    Image.fromarray(_picture()).save(tmp_path / "f.png")
    assert np.array_equal(read_image(tmp_path / "f.png"), _picture())


def test_exif_rotated_mask_reads_upright(tmp_path):
    ids = np.zeros((4, 6), np.uint8)
    ids[0, :2] = 1  # top left
    im = Image.fromarray(ids)
    im.putpalette(davis_palette_flat())
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # shown rotated 90 degrees clockwise
    im.save(tmp_path / "m.png", exif=exif)
    assert np.array_equal(read_mask(tmp_path / "m.png"), np.rot90(ids, -1))
    assert mask_size(tmp_path / "m.png") == (6, 4)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (valid signature and IHDR, no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_decompression_bomb_is_one_error_naming_file_and_size(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 60000, 60000)
    for read, error in ((read_image, VideoError), (read_mask, InputError), (mask_size, InputError)):
        with pytest.raises(error) as e:
            read(path)
        message = str(e.value)
        assert message.startswith(f"{path}: image is 60000x60000 pixels (3,600 megapixels), over the 179-megapixel")
        assert "\n" not in message
