""":func:`track_video`: one video (file, frame folder or live stream) tracked into files, what ``siammae-track`` runs
for one video: a thin constructor of one :class:`~siammae.tracking.run.TrackingRun` with a mask or a keypoint sink.

It checks its inputs (frame-0 mask read once and checked against the video, later masks, keypoints), claims its
outputs (:func:`~siammae.tracking.run.claim_outputs`) before the first frame is decoded, and hands the run one of
the two sinks here: :class:`MaskSink` (one indexed PNG per frame, atomically; a JSON Lines log) or
:class:`KeypointSink` (the keypoint track). A path that names a live source (``-``, a URL, a camera) is opened with
:func:`~siammae.data.live.open_source`; with no output given, the masks go where the command puts them
(:func:`~siammae.tracking.run_outputs.default_out`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from siammae.data.keypoints import Keypoints, KeypointTrackWriter, check_inside, read_keypoints
from siammae.data.live import LiveSource, is_live, open_source
from siammae.data.masks import first_masks, write_mask
from siammae.data.video import VideoSource
from siammae.errors import InputError
from siammae.io import open_append
from siammae.propagation.driver import Tracked, Tracker
from siammae.propagation.heatmaps import heatmaps_to_keypoints, keypoints_to_heatmaps
from siammae.tracking.overlay import draw_keypoints, overlay_masks
from siammae.tracking.report import RunReport
from siammae.tracking.run import TrackingRun, claim_outputs, settings
from siammae.tracking.run_outputs import RunOutputs

Source = str | os.PathLike | VideoSource | LiveSource


def frame_objects(ids: np.ndarray) -> dict:
    """Per object id of an (H, W) id map: its area in pixels and bounding box [x0, y0, x1, y1] (inclusive)."""
    out = {}
    for i in np.unique(ids):
        if i == 0:
            continue
        ys, xs = np.nonzero(ids == i)
        out[str(int(i))] = {"area": int(len(xs)), "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}
    return out


# ------------------------------------------------------------------------------------------------- sinks
class MaskSink:
    """Masks: one indexed PNG per frame in ``out`` (named like the frame), and with ``jsonl`` one line per frame
    (index, name, time stamp, per-object area and box), flushed as it is written so that another program can follow
    the file live; a log, appended as it goes, not an atomic file."""

    def __init__(self, tracker: Tracker, out: Path | None, jsonl: Path | None):
        self.read_out = tracker.read_out
        self.out = out
        self.objects: set[int] = set()
        self._lines = open_append(jsonl, truncate=True) if jsonl is not None else None  # never through a link

    def write(self, item: Tracked, ids: np.ndarray) -> None:
        self.objects.update(int(i) for i in item.object_ids[1:])
        if self.out is not None:
            path = self.out / f"{item.frame.name}.png"
            try:
                write_mask(path, ids)
            except OSError as e:
                raise InputError(f"{path}: cannot write ({e.strerror or e})") from e
        if self._lines is not None:
            t = item.frame.time
            line = {"index": item.frame.index, "name": item.frame.name, "time": None if t is None else round(t, 6),
                    "objects": frame_objects(ids)}  # fmt: skip
            self._lines.write(json.dumps(line) + "\n")
            self._lines.flush()

    draw = staticmethod(overlay_masks)

    def summary(self) -> dict:
        return {"objects": sorted(self.objects)}

    def finish(self, status: str) -> None:
        if self._lines is not None:
            self._lines.close()


class KeypointSink:
    """Keypoints: read out per frame as the weighted mean of each heatmap's top 3 cells (frame 0 keeps the given
    points), written to ``keypoints.json`` (at the end) and ``keypoints.jsonl`` (as it goes) when there is a track."""

    def __init__(self, keypoints: Keypoints, size: tuple[int, int], track: KeypointTrackWriter | None):
        self.keypoints, self.size, self.track = keypoints, size, track

    def read_out(self, item: Tracked) -> np.ndarray:
        if item.frame.index == 0:
            return self.keypoints.xy  # the given points, not their heatmaps' cells
        return heatmaps_to_keypoints(item.soft, self.size)[0]  # [J, 2] pixels, NaN where a heatmap vanished

    def write(self, item: Tracked, xy: np.ndarray) -> None:
        if self.track is not None:
            self.track.add(item.frame.name, xy)

    draw = staticmethod(draw_keypoints)

    def summary(self) -> dict:
        return {"keypoints": list(self.keypoints.names)}

    def finish(self, status: str) -> None:
        if self.track is not None:
            self.track.close(status=status)


# ------------------------------------------------------------------------------------------------- inputs
def open_input(video: Source) -> VideoSource | LiveSource:
    """An open source: as given, a live source for ``-`` / a URL / a camera, else a file or frame folder."""
    if isinstance(video, (VideoSource, LiveSource)):
        return video
    return open_source(video) if is_live(video) else VideoSource(video)


# ------------------------------------------------------------------------------------------------- runs
def track_video(
    tracker: Tracker,
    video: Source,
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    keypoints: str | os.PathLike | Keypoints | np.ndarray | None = None,
    mask_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    jsonl: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunReport:
    """Track the objects of ``mask`` (frame 0) and ``mask_dir`` (later frames), or the ``keypoints`` of frame 0,
    through ``video`` into files; what ``siammae-track`` runs for one video.

    video: a video file, a frame folder, a live source (``-``, a URL, a camera) or an open source
    (:func:`~siammae.data.live.open_source`). mask: frame 0's mask (file or id map); optional when ``mask_dir`` holds
    a mask named like frame 0. out: folder for one indexed PNG per frame (named like the frame); with no output at
    all, ``default_out``. overlay: an h264 video of the frames with the masks drawn on. report: a JSON report
    (with a Markdown twin beside it). jsonl: a JSON Lines file, one line per frame written as it goes
    (:func:`frame_objects`: area and box per object). keypoints: see :func:`_track_keypoints` (instead of masks;
    ``out`` then holds the keypoint track).
    Returns the :class:`~siammae.tracking.report.RunReport`. Raises InputError / VideoError on bad input;
    KeyboardInterrupt after saving what was done.
    """
    if keypoints is not None:
        if mask is not None or mask_dir is not None or jsonl is not None:
            raise InputError("give either keypoints or a mask / mask_dir (and jsonl), not both")
        return _track_keypoints(tracker, video, keypoints, out=out, overlay=overlay, report=report,
                                overwrite=overwrite, progress=progress)  # fmt: skip
    outputs = RunOutputs.of(out, overlay, report, jsonl).or_default(video)
    src = open_input(video)
    first, references = first_masks(mask, mask_dir, src)
    claim = claim_outputs(outputs, overwrite, tracker, src)
    try:
        sink = MaskSink(tracker, outputs.out, outputs.jsonl)
    except BaseException:
        if claim is not None:
            claim.close()
        raise
    return TrackingRun(tracker, src, sink, outputs, claim, progress).run(first, references)


def _track_keypoints(
    tracker: Tracker,
    video: Source,
    keypoints: str | os.PathLike | Keypoints | np.ndarray,
    *,
    out: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> RunReport:
    """Track the keypoints of frame 0 through ``video``; what ``siammae-track --keypoints`` runs.

    keypoints: a keypoint JSON file (:func:`siammae.data.keypoints.read_keypoints` schema), a
        :class:`~siammae.data.keypoints.Keypoints`, or a [J, 2] array of (x, y) pixels (NaN rows: points not given).
    The points become Gaussian heatmaps on the patch grid plus a background channel, propagate as soft labels,
    and are read out per frame as the weighted mean of each heatmap's top 3 cells (the JHMDB protocol,
    :mod:`siammae.data.keypoints`), in the video's own pixels; frame 0 keeps the given points.
    out: folder for ``keypoints.json`` (the whole track; written at the end, also when the run stops early) and
    ``keypoints.jsonl`` (one line per frame, appended as each frame is done); with no output at all,
    ``default_out``. overlay: an h264 video of the frames with the points drawn on. report: a JSON report (with
    a Markdown twin beside it).
    """
    outputs = RunOutputs.of(out, overlay, report).or_default(video, keypoints=True)
    src = open_input(video)
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
    claim = claim_outputs(outputs, overwrite, tracker, src)
    track = None
    try:
        if outputs.out is not None:
            d = outputs.out
            info = {"video": str(src.path), "settings": settings(tracker, tracker.chunk_for(src)).to_json()}
            track = KeypointTrackWriter(d / "keypoints.json", d / "keypoints.jsonl", keypoints.names, size, info)
    except BaseException:
        if claim is not None:  # it failed: release --out
            claim.close()
        raise
    sink = KeypointSink(keypoints, size, track)
    return TrackingRun(tracker, src, sink, outputs, claim, progress).run(heatmaps, {})


__all__ = ["KeypointSink", "MaskSink", "frame_objects", "track_video"]
