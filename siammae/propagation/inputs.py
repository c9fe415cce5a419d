"""How frames become encoder input: the input rule of a preset (size rule, resize, mean / std) and the one
parser of the size grammar (``480`` / ``480x880``).

Each preset (:mod:`siammae.propagation.config`) follows a reference script, and its input side is part of that
protocol (docs/PROTOCOL.md, "Input"):

============== ================================================ ===================== ======= ==========
preset         size (H x W the encoder sees)                    resize                mean    std
============== ================================================ ===================== ======= ==========
dino           short side 480, long side floored to 64          uint8, then / 255     ImageNet (0.228, ...)
siammae-davis  fixed 480 x 880                                  float / 255, then     ImageNet ImageNet
siammae-jhmdb  fixed 320 x 320                                  float / 255, then     ImageNet ImageNet
siammae-vip    long side 880, short side floored to 64          float / 255, then     ImageNet ImageNet
============== ================================================ ===================== ======= ==========

- ``dino``: facebookresearch/dino ``eval_video_segmentation.py`` ``read_frame``: ``cv2.imread``, then
  ``cv2.resize(img, (tw, th))`` on the **uint8** image (bilinear, fixed point, rounded back to uint8), then
  ``/ 255`` and the normalisation with DINO's std (0.228, 0.224, 0.225), a typo of 0.229 its numbers depend on.
- ``siammae-*``: CropMAE ``downstreams/propagation`` (CRW's ajabri/videowalk ``data/vos.py`` and
  ``data/jhmdb.py`` at CropMAE's ``crop_size``: DAVIS [480, 880], JHMDB [320, 320], VIP [880]): ``cv2.imread``,
  ``float32 / 255``, then ``cv2.resize`` of the **float** image (bilinear), ImageNet normalisation. A one-value
  ``crop_size`` there sets the *long* side and floors the other to 64.

Both resizes run here with OpenCV itself, so the input is bit-exact (OpenCV's float bilinear differs from
``torch.nn.functional.interpolate`` by up to 1.5e-5). Frames are decoded with PIL, which equals ``cv2.imread`` on
the DAVIS JPEGs (tests/propagation/test_driver.py checks it); videos decode to RGB uint8 with PyAV and are resized
the same way.
Deviations, for inputs the references never see: a fixed size is transposed for portrait frames, and a side that
is not a multiple of the patch size is floored to one (after the floor to 64).

One override, ``size`` (:func:`parse_size`): an int / ``"480"`` is a short side with the aspect kept (the free side
floored as the preset floors it), a pair / ``"480x880"`` a fixed size (short x long). ``siammae-track``,
``siammae-eval``, ``siammae-attn`` and ``siammae-export`` read ``--size`` with this parser, and with the same preset
they encode the same frames to the same tensors.

This module loads neither torch nor OpenCV until a frame is resized or batched (``--help`` reads the presets).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from siammae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from siammae.errors import InputError

if TYPE_CHECKING:
    import torch

RESIZES = ("uint8", "float")
SIZE_GRAMMAR = "a short side (480) or a short x long size (480x880)"


def parse_size(size) -> int | tuple[int, int]:
    """The size grammar, parsed in this one place: an int / ``"480"`` is a short side (-> 480); a pair /
    ``"480x880"`` / ``"880x480"`` a fixed size (-> (short, long) = (480, 880), transposed for portrait frames
    when applied). Anything else is an :class:`InputError` naming the value."""
    parts = size if isinstance(size, (list, tuple)) and len(size) == 2 else None  # a pair, as given
    if isinstance(size, str):
        try:
            parts = [int(v) for v in size.strip().lower().split("x")]
        except ValueError:
            parts = []
    elif isinstance(size, int) and not isinstance(size, bool):
        parts = [size]
    if isinstance(parts, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in parts):
        if len(parts) == 1 and parts[0] > 0:
            return parts[0]
        if len(parts) == 2 and min(parts) > 0:
            return min(parts), max(parts)
    raise InputError(f"input size {size!r} is not {SIZE_GRAMMAR}")


def _check_rgb(name: str, v) -> None:
    if (
        not isinstance(v, tuple)
        or len(v) != 3
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in v)
    ):
        raise InputError(f"input {name} must be a tuple of 3 finite numbers (R, G, B), got {v!r}")


@dataclass(frozen=True)
class InputConfig:
    """The input rule of a preset: how frames are resized and normalised before the encoder.

    short_side: the short side becomes this (aspect kept), unless ``long_side`` or ``size`` is set.
    long_side: the long side becomes this (aspect kept); CropMAE's one-value ``crop_size``.
    multiple: the side that keeps the aspect is floored to a multiple of this (DINO and CropMAE: 64; None: the
        patch size), then to a multiple of the patch size.
    size: (short, long) fixed size, transposed for portrait frames; overrides the two above.
    mean, std: the normalisation ``(x - mean) / std`` of RGB in [0, 1] (the encoder applies it).
    resize: "uint8": ``cv2.resize`` of the uint8 frame, then / 255 (DINO); "float": / 255, then ``cv2.resize`` of
        the float32 frame (CRW / CropMAE).
    """

    short_side: int | None = 480
    long_side: int | None = None
    multiple: int | None = None
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "float"

    def __post_init__(self):
        if self.resize not in RESIZES:
            raise InputError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        for name in ("short_side", "long_side", "multiple"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InputError(f"input {name} must be a positive integer, got {v!r}")
        if self.size is not None and parse_size(tuple(self.size)) != self.size:
            raise InputError(f"input size must be a (short, long) pair of positive integers, got {self.size!r}")
        if self.size is None and (self.short_side is None) == (self.long_side is None):
            raise InputError("give exactly one of short_side, long_side or a fixed size")
        _check_rgb("mean", self.mean)
        _check_rgb("std", self.std)
        if min(self.std) <= 0:
            raise InputError(f"input std must be > 0, got {self.std!r}")

    def with_size(self, size) -> InputConfig:
        """This rule with the ``size`` override (see :func:`parse_size`): a short side keeps the aspect, the free
        side floored as this rule floors it (``multiple``); a pair is a fixed size."""
        parsed = parse_size(size)
        if isinstance(parsed, int):
            return dataclasses.replace(self, short_side=parsed, long_side=None, size=None)
        return dataclasses.replace(self, size=parsed)

    def frame_size(self, height: int, width: int, patch_size: int) -> tuple[int, int]:
        """(H, W) the encoder sees for a ``height`` x ``width`` frame: the size rule, applied in this one place."""
        p = patch_size
        if self.size is not None:
            short, long = self.size
            if short % p or long % p:
                raise InputError(f"input size {short}x{long} is not a multiple of the patch size {p}")
        else:
            lo, hi = min(height, width), max(height, width)
            fixed = self.short_side if self.short_side is not None else self.long_side
            if fixed < p:
                raise InputError(f"size {fixed} is smaller than the patch size {p}")
            m = self.multiple or p
            free = int(fixed * (hi / lo if self.short_side is not None else lo / hi))  # aspect kept, floored
            free = max(m, free // m * m) // p * p  # DINO: int((tw // 64) * 64); at least one multiple
            fixed = fixed // p * p
            short, long = (fixed, free) if self.short_side is not None else (free, fixed)
        return (short, long) if height <= width else (long, short)


def resize_frame(rgb: np.ndarray, size: tuple[int, int], resize: str) -> np.ndarray:
    """(H0, W0, 3) uint8 RGB -> (H, W, 3) at ``size`` = (H, W): uint8 for "uint8" (DINO), float32 in [0, 1] for
    "float" (CRW / CropMAE), both bilinear by ``cv2.resize`` exactly as the reference scripts call it."""
    import cv2  # deferred: only the model side needs OpenCV

    H, W = size
    if resize == "uint8":
        return rgb if rgb.shape[:2] == (H, W) else cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR)
    x = rgb.astype(np.float32) / 255.0
    return x if rgb.shape[:2] == (H, W) else cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR)


def to_batch(frames: list[np.ndarray], device) -> torch.Tensor:
    """Frames of :func:`resize_frame` -> (B, 3, H, W) float32 in [0, 1] on ``device``. uint8 frames travel as
    uint8 (a quarter of the bytes) and are divided by 255 there."""
    import torch

    x = torch.from_numpy(np.stack(frames)).to(device, non_blocking=True)  # (B, H, W, 3)
    x = x.permute(0, 3, 1, 2)  # (B, 3, H, W)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.contiguous()


def chunks(
    items: Iterable, size: int, ends: Callable[[object], bool] | None = None, first: int | None = None
) -> Iterator[list]:
    """Lists of up to ``size`` consecutive items (the first list up to ``first``, when given: a quick first
    result); an item for which ``ends(item)`` is true ends its list. When the source fails, the items before the
    failure come out first, then the exception (a truncated video still gives its decoded frames)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"chunk size must be an integer >= 1, got {size!r}")
    batch: list = []
    it = iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            break
        except BaseException:  # the source broke (truncated file, Ctrl-C): the items before it still count
            if batch:
                yield batch
            raise
        batch.append(item)
        if len(batch) == (first or size) or (ends is not None and ends(item)):
            yield batch
            batch, first = [], None
    if batch:
        yield batch
