"""``track_video`` / ``track_keypoints_video``: a video (file, frame folder or live stream) and its first-frame
masks / keypoints in; mask PNGs or a keypoint track, an overlay video, a per-frame JSON Lines log and a report out;
what siammae-track runs for one video.

These functions check every input and output before the first frame is decoded, so a bad path fails at once, then
hand one :class:`~siammae.tracking.run.TrackingRun` a :class:`~siammae.tracking.run.Sink` that says what to write
per frame (one indexed PNG, atomically; or one line of the keypoint track). The run streams, writes, keeps the
frames before any stop, and reports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from siammae.data.keypoints import Keypoints, KeypointTrackWriter, check_inside, read_keypoints
from siammae.data.masks import check_objects, check_size, list_masks, mask_size, read_mask, write_mask
from siammae.data.video import VideoSource, list_frame_files, open_video
from siammae.errors import InputError
from siammae.io import open_append
from siammae.propagation.keypoints import heatmaps_to_keypoints, keypoints_to_heatmaps
from siammae.tracking.checks import check_outputs, require_output
from siammae.tracking.overlay import draw_keypoints, overlay_masks
from siammae.tracking.run import Sink, TrackingRun, settings
from siammae.tracking.tracker import Tracked, Tracker


def _later_masks(mask_dir: Path, masks: dict[str, Path], src: VideoSource, names: list[str] | None) -> dict[str, Path]:
    """``masks`` (``list_masks(mask_dir)``) by frame name, every file checked against the video (names, sizes)
    before the run."""
    if names is not None:
        unknown = sorted(set(masks) - set(names))
    else:
        count = src.num_frames
        unknown = sorted(n for n in masks if not (n.isdigit() and (count is None or int(n) < count)))
    if unknown:
        what = "frames of the folder" if src.is_folder else "5-digit frame indices of the video"
        raise InputError(f"{mask_dir}: masks {', '.join(unknown[:4])} match no frame (names must be {what})")
    for path in masks.values():
        check_size(mask_size(path), (src.height, src.width), path)
    if names is None:  # "00012" and "12" both name frame 12
        masks = {f"{int(n):05d}": p for n, p in masks.items()}
    return masks


def frame_objects(ids: np.ndarray) -> dict:
    """Per object id of an (H, W) id map: its area in pixels and bounding box [x0, y0, x1, y1] (inclusive)."""
    out = {}
    for i in np.unique(ids):
        if i == 0:
            continue
        ys, xs = np.nonzero(ids == i)
        out[str(int(i))] = {"area": int(len(xs)), "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}
    return out


class _JsonLines:
    """``--jsonl``: one line per frame (index, name, time stamp, per-object area and box), flushed as it is written
    so that another program can follow the file live. It is a log, appended as it goes, not an atomic file."""

    def __init__(self, path):
        self.path = Path(path)
        self._f = open_append(self.path, truncate=True)  # never through a planted link

    def add(self, item: Tracked, ids: np.ndarray) -> None:
        t = item.frame.time
        line = {"index": item.frame.index, "name": item.frame.name, "time": None if t is None else round(t, 6),
                "objects": frame_objects(ids)}  # fmt: skip
        self._f.write(json.dumps(line) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def track_video(
    tracker: Tracker,
    video: str | os.PathLike | VideoSource,
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    mask_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    jsonl: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Track the objects of ``mask`` (frame 0) and ``mask_dir`` (later frames) through ``video``.

    video: a video file, a frame folder or an open source (:func:`~siammae.data.video.open_video`,
    :class:`~siammae.data.live.LiveSource`). mask: frame 0's mask (file or id map); optional when ``mask_dir`` holds
    a mask named like frame 0. out: folder for one indexed PNG per frame (named like the frame). overlay: an h264
    video of the frames with the masks drawn on. report: a JSON report (with a Markdown twin beside it). jsonl: a
    JSON Lines file, one line per frame written as it goes (:func:`frame_objects`: area and box per object).
    Returns the report dict. Raises InputError / VideoError on bad input; KeyboardInterrupt after saving what
    was done.
    """
    require_output(out, overlay, report if jsonl is None else jsonl)
    src = video if hasattr(video, "is_folder") else open_video(video)
    names = [f.stem for f in list_frame_files(src.path)] if src.is_folder else None
    first_name = names[0] if names else "00000"
    listed = list_masks(mask_dir) if mask_dir is not None else {}
    if mask is None:
        mask = listed.get(first_name)
        if mask is None:
            raise InputError(f"no mask for frame 0 ({first_name}): give --mask, or put {first_name}.png in --mask-dir")
    references = _later_masks(Path(mask_dir), listed, src, names) if mask_dir is not None else {}
    references.pop(first_name, None)  # frame 0's mask is ``mask``
    if not isinstance(mask, np.ndarray):  # fail before the run, not at frame 0
        mask = Path(mask)
        ids = read_mask(mask)
        check_size(ids.shape, (src.height, src.width), mask)
        check_objects(ids, mask)
    outputs = check_outputs(out, overlay, report, overwrite, tracker, src, jsonl)
    objects: set[int] = set()
    lines = _JsonLines(jsonl) if jsonl is not None else None

    def write(item: Tracked, ids: np.ndarray) -> None:
        objects.update(int(i) for i in item.object_ids[1:])
        if out is not None:
            path = Path(out) / f"{item.frame.name}.png"
            try:
                write_mask(path, ids)
            except OSError as e:
                raise InputError(f"{path}: cannot write ({e.strerror or e})") from e
        if lines is not None:
            lines.add(item, ids)

    def finish(status: str) -> None:
        if lines is not None:
            lines.close()

    sink = Sink(tracker.read_out, write, overlay_masks, lambda: {"objects": sorted(objects)}, finish)
    return TrackingRun(tracker, src, sink, outputs, progress).run(mask, references)


def track_keypoints_video(
    tracker: Tracker,
    video: str | os.PathLike | VideoSource,
    keypoints: str | os.PathLike | Keypoints | np.ndarray,
    *,
    out: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Track the keypoints of frame 0 through ``video``; what ``siammae-track --keypoints`` runs.

    keypoints: a keypoint JSON file (:func:`siammae.data.keypoints.read_keypoints` schema), a
        :class:`~siammae.data.keypoints.Keypoints`, or a [J, 2] array of (x, y) pixels (NaN rows: points not given).
    The points become Gaussian heatmaps on the patch grid plus a background channel, propagate as soft labels,
    and are read out per frame as the weighted mean of each heatmap's top 3 cells (the JHMDB protocol,
    :mod:`siammae.data.keypoints`), in the video's own pixels; frame 0 keeps the given points.
    out: folder for ``keypoints.json`` (the whole track; written at the end, also when the run stops early) and
    ``keypoints.jsonl`` (one line per frame, appended as each frame is done). overlay: an h264 video of the frames
    with the points drawn on. report: a JSON report (with a Markdown twin beside it).
    Returns the report dict. Raises InputError / VideoError on bad input; KeyboardInterrupt after saving what
    was done.
    """
    require_output(out, overlay, report)
    src = video if hasattr(video, "is_folder") else open_video(video)
    size = (src.height, src.width)
    where = "first-frame keypoints"
    if isinstance(keypoints, (str, os.PathLike)):
        where = f"keypoint file {keypoints}"
        keypoints = read_keypoints(keypoints, size)
    elif not isinstance(keypoints, Keypoints):
        xy = np.asarray(keypoints, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
            raise InputError(f"keypoints must be a [J, 2] array of (x, y) pixels, got shape {xy.shape}")
        keypoints = Keypoints(xy=xy, names=tuple(str(j) for j in range(len(xy))))
    check_inside(keypoints, size, where)
    if np.isnan(keypoints.xy).all():
        raise InputError(f"{where}: every point is null; give at least one [x, y]")
    grid = tracker.grid_size(*size)  # fails here, before any output, for an encoder built for another size
    heatmaps = keypoints_to_heatmaps(keypoints.xy, size, grid)  # (1 + J, h, w), channel 0 the background
    outputs = check_outputs(out, overlay, report, overwrite, tracker, src)
    track = None
    if out is not None:
        info, d = {"video": str(src.path), "settings": settings(tracker)}, Path(out)
        try:
            track = KeypointTrackWriter(d / "keypoints.json", d / "keypoints.jsonl", keypoints.names, size, info)
        finally:
            if track is None and outputs.get("folder") is not None:  # it failed: release --out
                outputs["folder"].close()

    def read_out(item: Tracked) -> np.ndarray:
        if item.frame.index == 0:
            return keypoints.xy  # the given points, not their heatmaps' cells
        return heatmaps_to_keypoints(item.soft, size)[0]  # [J, 2] pixels, NaN where a heatmap vanished

    def write(item: Tracked, xy: np.ndarray) -> None:
        if track is not None:
            track.add(item.frame.name, xy)

    def finish(status: str) -> None:
        if track is not None:
            track.close(status=status)

    sink = Sink(read_out, write, draw_keypoints, lambda: {"keypoints": list(keypoints.names)}, finish)
    return TrackingRun(tracker, src, sink, outputs, progress).run(heatmaps, {})


__all__ = ["Tracked", "track_keypoints_video", "track_video"]
