"""Keypoints as label maps: Gaussian heatmaps that propagate like masks, and back to points.

The JHMDB pose-propagation protocol (CRW ``data/jhmdb.py`` + ``test.py``, used by DINO-style evaluations and
SiamMAE): each joint becomes a heatmap on the feature grid, peak 1 with ``sigma = 0.5`` cells, drawn in a
``+/- 3 sigma`` window; channel 0 is the background (1 where no joint heatmap is nonzero). The maps propagate
through the video exactly like one-hot masks. A joint's position in a later frame is the weighted mean of the
``topk = 3`` highest cells of its propagated map, weights the map values, mapped back to pixels.

Coordinates are (x, y) pixels of the original frame, 0-based: (0, 0) is the centre of the top-left pixel
(JHMDB's 1-based ``pos_img`` minus 1). Pixel ``x`` is cell ``x * w / W`` on a ``w``-wide grid and back, as CRW
(``pos_img * new_w / ori_w / stride``, ``coord / feat_res * width``).

User keypoints for ``siammae-track --keypoints first.json`` (schema, read by :func:`read_keypoints`)::

    {"keypoints": [[x, y], [x, y], null, ...]}             # unnamed; null = no point
    {"keypoints": {"nose": [x, y], "left eye": [x, y]}}     # named, in file order
    {"keypoints": [[x, y], ...], "names": ["nose", ...]}    # names given separately

Tracked keypoints are written by :func:`write_keypoint_track` as::

    {"names": [...], "width": W, "height": H,
     "frames": [{"frame": "00000", "index": 0, "keypoints": [[x, y], null, ...]}, ...]}

with ``null`` where a point is not visible (its heatmap vanished, or it was never given).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siammae.errors import InputError
from siammae.io import atomic_write

# CRW / JHMDB protocol constants (PROTOCOL.md, "Keypoints").
SIGMA = 0.5
TOPK = 3

_SCHEMA = "a list of [x, y] (or null) or a name -> [x, y] map"


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


@dataclass(frozen=True)
class Keypoints:
    """User keypoints of one frame: [J, 2] (x, y) pixels (NaN rows = not given) and J names."""

    xy: np.ndarray
    names: tuple[str, ...]


def _point(value, where: str) -> tuple[float, float]:
    if value is None:
        return (math.nan, math.nan)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise InputError(f"{where} is {json.dumps(value)}; a keypoint is [x, y] (two finite numbers) or null")
    return (float(value[0]), float(value[1]))


def read_keypoints(path: str | Path, image_size: tuple[int, int] | None = None) -> Keypoints:
    """Read a keypoint file (schema in the module docstring); ``image_size`` = (H, W) checks the bounds."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"keypoint file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"keypoint file {path} is not readable JSON: {err}") from None
    if not isinstance(data, dict) or "keypoints" not in data:
        raise InputError(f'keypoint file {path} needs a "keypoints" entry: {_SCHEMA}')
    raw = data["keypoints"]
    if isinstance(raw, dict):
        names, values = tuple(str(k) for k in raw), list(raw.values())
    elif isinstance(raw, list):
        values = raw
        names = tuple(data.get("names") or (str(i) for i in range(len(raw))))
        if len(names) != len(values) or not all(isinstance(n, str) for n in names):
            raise InputError(f'keypoint file {path}: "names" must be {len(values)} strings, one per keypoint')
    else:
        raise InputError(f'keypoint file {path}: "keypoints" must be {_SCHEMA}')
    if not values:
        raise InputError(f"keypoint file {path} holds no keypoint")
    xy = np.array([_point(v, f"{path}: keypoint {n!r}") for n, v in zip(names, values, strict=True)])
    if image_size is not None:
        H, W = image_size
        x, y = xy[:, 0], xy[:, 1]
        outside = ~np.isnan(x) & ((x < 0) | (x > W - 1) | (y < 0) | (y > H - 1))
        if outside.any():
            j = int(np.argmax(outside))
            raise InputError(
                f"{path}: keypoint {names[j]!r} at ({xy[j, 0]:g}, {xy[j, 1]:g}) is outside the {W}x{H} frame"
            )
    return Keypoints(xy=xy, names=names)


def write_keypoint_track(
    path: str | Path,
    names: tuple[str, ...],
    frames: list[tuple[str, np.ndarray]],
    image_size: tuple[int, int],
) -> None:
    """Write tracked keypoints as JSON (schema in the module docstring), atomically.

    frames: per frame (its name, [J, 2] (x, y) pixels with NaN rows for points not visible), in video order.
    image_size: (H, W) of the frames.
    """
    H, W = image_size
    out = {"names": list(names), "width": W, "height": H, "frames": []}
    for index, (name, xy) in enumerate(frames):
        points = [None if np.isnan(p).any() else [round(float(p[0]), 2), round(float(p[1]), 2)] for p in xy]
        out["frames"].append({"frame": name, "index": index, "keypoints": points})
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(out, indent=1) + "\n")
