"""Keypoint files: the user's first-frame points and the tracked track (JSON and JSON Lines).

How points become heatmaps that propagate like masks, and back (the JHMDB protocol of CRW and DINO-style
evaluations), is :mod:`siammae.propagation.heatmaps`. Coordinates here are (x, y) pixels of the original frame,
0-based: (0, 0) is the centre of the top-left pixel (JHMDB's 1-based ``pos_img`` minus 1).

User keypoints for ``siammae-track --keypoints first.json`` (schema, read by :func:`read_keypoints`)::

    {"keypoints": [[x, y], [x, y], null, ...]}             # unnamed; null = no point
    {"keypoints": {"nose": [x, y], "left eye": [x, y]}}     # named, in file order
    {"keypoints": [[x, y], ...], "names": ["nose", ...]}    # names given separately

Tracked keypoints are written by :func:`write_keypoint_track` (a whole track) or streamed by
:class:`KeypointTrackWriter` (frame by frame, ``siammae-track --keypoints``) as (one line per frame)::

    {"names": [...], "width": W, "height": H, ...,
     "frames": [
    {"frame": "00000", "index": 0, "keypoints": [[x, y], null, ...]},
    ...
    ]}

with ``null`` where a point is not visible (its heatmap vanished, or it was never given). The streaming writer
also keeps each frame's line in a JSON Lines file beside it, written as the frame is done.
"""

import contextlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from siammae.errors import InputError
from siammae.io import atomic_write, open_append, parse_json, read_json, write_error

_SCHEMA = "a list of [x, y] (or null) or a name -> [x, y] map"


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
    if not path.exists():
        raise InputError(f"keypoint file {path} does not exist")
    data = read_json(path, (dict, list), what="keypoint file")
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
    keypoints = Keypoints(xy=xy, names=names)
    if image_size is not None:
        check_inside(keypoints, image_size, str(path))
    return keypoints


def check_inside(keypoints: Keypoints, image_size: tuple[int, int], where: str = "keypoints") -> None:
    """Raise an InputError naming the first given point outside a frame of ``image_size`` = (H, W) pixels."""
    H, W = image_size
    xy = keypoints.xy
    x, y = xy[:, 0], xy[:, 1]
    outside = ~np.isnan(x) & ((x < 0) | (x > W - 1) | (y < 0) | (y > H - 1))
    if outside.any():
        j = int(np.argmax(outside))
        raise InputError(
            f"{where}: keypoint {keypoints.names[j]!r} at ({xy[j, 0]:g}, {xy[j, 1]:g}) is outside the {W}x{H} frame"
        )


def _frame_entry(name: str, index: int, xy: np.ndarray) -> str:
    """One frame of a track as a one-line JSON object; NaN rows become null."""
    points = [None if np.isnan(p).any() else [round(float(p[0]), 2), round(float(p[1]), 2)] for p in xy]
    return json.dumps({"frame": name, "index": index, "keypoints": points})


def _dump_track(path: Path, header: dict, entries: Iterable[str]) -> None:
    """Write ``header``'s fields, then ``"frames"`` from the one-line JSON ``entries``, atomically; streamed, so
    the frames are never all in memory."""
    try:
        with atomic_write(path) as tmp, open(tmp, "w") as f:
            f.write("{" + "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in header.items()) + '"frames": [')
            for i, entry in enumerate(entries):
                f.write(("\n" if i == 0 else ",\n") + entry)
            f.write("\n]}\n")
    except OSError as e:
        raise write_error(path, e) from e


def _complete(line: str) -> bool:
    """Whether a line of the JSON Lines file is a whole frame entry (a full disk can leave the last one torn)."""
    if not line.strip():
        return False
    try:
        parse_json(line, "line")
        return True
    except ValueError:
        return False


def _header(names: tuple[str, ...], image_size: tuple[int, int], info: dict | None) -> dict:
    H, W = image_size
    return {"names": list(names), "width": W, "height": H, **(info or {})}


def write_keypoint_track(
    path: str | Path,
    names: tuple[str, ...],
    frames: list[tuple[str, np.ndarray]],
    image_size: tuple[int, int],
    info: dict | None = None,
) -> None:
    """Write tracked keypoints as JSON (schema in the module docstring), atomically.

    frames: per frame (its name, [J, 2] (x, y) pixels with NaN rows for points not visible), in video order.
    image_size: (H, W) of the frames. info: more top-level fields (settings, status), written before "frames".
    """
    entries = (_frame_entry(name, index, xy) for index, (name, xy) in enumerate(frames))
    _dump_track(Path(path), _header(names, image_size, info), entries)


class KeypointTrackWriter:
    """Write a keypoint track frame by frame, in memory that does not grow with the video.

    :meth:`add` appends the frame's line to ``lines`` (JSON Lines, one ``{"frame", "index", "keypoints"}`` object
    per line, flushed at once): a run killed outright still leaves every finished frame there (at most the last
    line torn). :meth:`close` writes the whole track to ``path`` in the schema of the module docstring, atomically,
    streaming the lines back; call it however the run ended (``status`` says how), so ``path`` is always a valid
    JSON file of the frames done.
    """

    def __init__(
        self,
        path: str | Path,
        lines: str | Path,
        names: tuple[str, ...],
        image_size: tuple[int, int],
        info: dict | None = None,
    ):
        self.path, self.lines = Path(path), Path(lines)
        self.header = _header(names, image_size, info)
        self.frames = 0
        self._file: TextIO | None = open_append(self.lines, truncate=True)  # never through a link

    def add(self, name: str, xy: np.ndarray) -> None:
        """Append frame ``name`` (the next index): [J, 2] (x, y) pixels, NaN rows for points not visible."""
        try:
            self._file.write(_frame_entry(name, self.frames, xy) + "\n")
            self._file.flush()
        except OSError as e:
            raise write_error(self.lines, e) from e
        self.frames += 1

    def close(self, **info) -> Path:
        """Write ``path`` from the lines (``info``: more top-level fields, e.g. ``status``); idempotent."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a failed flush: add() reported it; the lines on disk are read
                self._file.close()
            self._file = None
            with open(self.lines) as f:
                entries = (line.rstrip("\n") for line in f if _complete(line))
                _dump_track(self.path, {**self.header, **info}, entries)
        return self.path
