"""Deterministic synthetic videos with exact ground-truth masks: textured objects moving over a textured background.

They check the whole tracking pipeline end to end without downloads (tests, the demo's built-in example, the
constant-memory benchmark over 10,000 frames). The background is smooth noise in cool colours (blue to teal); each
object is an ellipse with diagonal stripes in its own warm colours (red-orange, yellow, magenta, ...), moving on a
Lissajous path that keeps it inside the frame, its texture moving with it. Objects are drawn in id order, so a
later one covers an earlier one where they overlap, and the ground truth says so.

``make_synthetic_clip(num_frames, size, seed)`` returns lists; ``iter_synthetic_clip`` yields one frame at a time
(constant memory for any length). The same seed gives the same video, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# two stripe colours per object (RGB); all warm, far from the background's cool colours
_OBJECT_COLOURS = (
    ((225, 45, 30), (245, 145, 35)),  # red / orange
    ((240, 215, 40), (200, 160, 20)),  # yellow / ochre
    ((215, 40, 160), (250, 120, 200)),  # magenta / pink
    ((240, 240, 235), (190, 120, 90)),  # white / tan
)
_BACKGROUND_COLOURS = ((20, 70, 160), (25, 150, 130))  # blue, teal
MAX_OBJECTS = len(_OBJECT_COLOURS)


@dataclass(frozen=True)
class _Object:
    ry: float  # semi-axes in pixels
    rx: float
    cy: float  # path centre, amplitude, angular speed (radians per frame) and phase, per axis
    cx: float
    ay: float
    ax: float
    wy: float
    wx: float
    py: float
    px: float
    texture: np.ndarray  # (2*ry+1 rounded up, 2*rx+1, 3) uint8, in the object's own coordinates


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """(h, w) float in [0, 1]: uniform noise on a coarse grid, upsampled bicubically."""
    coarse = rng.random((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    up = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(up), 0.0, 1.0)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    t = _smooth_noise(rng, h, w, cell=max(4, min(h, w) // 6))[..., None]  # (h, w, 1)
    a, b = (np.array(c, np.float32) for c in _BACKGROUND_COLOURS)
    img = a * (1 - t) + b * t + rng.normal(0.0, 10.0, (h, w, 3)).astype(np.float32)  # fine grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _object_texture(rng: np.random.Generator, h: int, w: int, colours) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(4.0, min(h, w) / 5)
    stripes = (((yy + xx) / period) % 1.0 < 0.5)[..., None]  # diagonal stripes
    a, b = (np.array(c, np.float32) for c in colours)
    img = np.where(stripes, a, b) + rng.normal(0.0, 12.0, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_objects(rng: np.random.Generator, H: int, W: int, num_objects: int) -> list[_Object]:
    objs = []
    for k in range(num_objects):
        # semi-axes: about a fifth of the frame for one object, smaller when there are several
        scale = 0.22 if num_objects == 1 else 0.16
        ry = float(H * scale * rng.uniform(0.85, 1.15))
        rx = float(W * scale * rng.uniform(0.85, 1.15))
        ay, ax = (H / 2 - ry - 1) * 0.9, (W / 2 - rx - 1) * 0.9  # amplitudes keep the ellipse inside the frame
        # about 2 % of the frame side per frame at the fastest point: a visible but trackable motion
        wy = float(rng.uniform(0.6, 1.0) * 0.02 * H / max(ay, 1.0))
        wx = float(rng.uniform(0.6, 1.0) * 0.02 * W / max(ax, 1.0))
        tex = _object_texture(rng, int(np.ceil(2 * ry)) + 2, int(np.ceil(2 * rx)) + 2, _OBJECT_COLOURS[k])
        objs.append(
            _Object(
                ry,
                rx,
                H / 2,
                W / 2,
                ay,
                ax,
                wy,
                wx,
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0, 2 * np.pi)),
                tex,
            )
        )
    return objs


def _draw(frame: np.ndarray, mask: np.ndarray, obj: _Object, t: int, obj_id: int) -> None:
    H, W = mask.shape
    cy = obj.cy + obj.ay * np.sin(obj.wy * t + obj.py)
    cx = obj.cx + obj.ax * np.sin(obj.wx * t + obj.px)
    y0, y1 = max(0, int(np.floor(cy - obj.ry))), min(H, int(np.ceil(cy + obj.ry)) + 1)
    x0, x1 = max(0, int(np.floor(cx - obj.rx))), min(W, int(np.ceil(cx + obj.rx)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = ((yy + 0.5 - cy) / obj.ry) ** 2 + ((xx + 0.5 - cx) / obj.rx) ** 2 <= 1.0  # pixel centres
    # texture coordinates relative to the object's top-left corner: the texture moves with the object
    ty = np.clip(yy - int(np.floor(cy - obj.ry)), 0, obj.texture.shape[0] - 1)
    tx = np.clip(xx - int(np.floor(cx - obj.rx)), 0, obj.texture.shape[1] - 1)
    region = frame[y0:y1, x0:x1]
    region[inside] = obj.texture[ty[inside], tx[inside]]
    mask[y0:y1, x0:x1][inside] = obj_id


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if H < 16 or W < 16:
        raise ValueError(f"synthetic clip size must be at least 16x16, got {W}x{H}")
    return H, W


def iter_synthetic_clip(
    num_frames: int | None,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    num_objects: int = 1,
    appear: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame, mask)`` pairs one at a time: frame (H, W, 3) uint8 RGB, mask (H, W) uint8 ids 0..num_objects.

    ``size``: an int (square) or (H, W). ``num_frames=None`` runs forever. ``appear``: the frame at which each
    object enters (default: all at frame 0), for objects that appear later. Memory does not depend on the length.
    """
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be 1..{MAX_OBJECTS}, got {num_objects}")
    appear = tuple(appear) if appear is not None else (0,) * num_objects
    if len(appear) != num_objects:
        raise ValueError(f"appear needs one frame per object ({num_objects}), got {appear}")
    H, W = _size(size)
    rng = np.random.default_rng(seed)
    background = _background(rng, H, W)
    objects = _make_objects(rng, H, W, num_objects)
    t = 0
    while num_frames is None or t < num_frames:
        frame = background.copy()
        mask = np.zeros((H, W), np.uint8)
        for k, obj in enumerate(objects):
            if t >= appear[k]:
                _draw(frame, mask, obj, t, k + 1)
        yield frame, mask
        t += 1


def make_synthetic_clip(
    num_frames: int,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    num_objects: int = 1,
    appear: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``num_frames`` frames and their ground-truth id maps as two lists (see :func:`iter_synthetic_clip`)."""
    frames, masks = [], []
    for frame, mask in iter_synthetic_clip(num_frames, size, seed, num_objects, appear):
        frames.append(frame)
        masks.append(mask)
    return frames, masks
