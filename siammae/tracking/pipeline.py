"""``track_video`` / ``track_keypoints_video``: a video and its first-frame masks / keypoints in; mask PNGs or a
keypoint track, an overlay video and a report out; what siammae-track runs.

    decode thread -> bounded queue -> Tracker (chunked encode, Propagator) -> bounded queue -> writer thread

The writer thread turns soft labels into id maps or keypoints (on the CPU; on a GPU the main thread does it
there), writes them (one indexed PNG per frame, atomically; or one line of the keypoint track) and feeds the
overlay encoder. Every output is checked before the first frame is decoded, so a bad path fails at once. When the
stream stops early (a truncated video, Ctrl-C), the frames before the stop are still written, the overlay is
closed as a valid video of those frames, the keypoint track's JSON and the report are written with the status,
and the exception is raised again.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siammae.data.keypoints import Keypoints, KeypointTrackWriter, check_inside, read_keypoints
from siammae.data.masks import check_objects, check_size, list_masks, mask_size, read_mask, write_mask
from siammae.data.video import VideoSource, list_frame_files, open_video, write_video
from siammae.errors import InputError
from siammae.propagation.keypoints import heatmaps_to_keypoints, keypoints_to_heatmaps
from siammae.tracking.overlay import draw_keypoints, overlay_masks
from siammae.tracking.report import (
    device_info,
    now_iso,
    peak_gpu_memory_mib,
    peak_host_memory_mib,
    versions,
    write_report,
)
from siammae.tracking.stream import BackgroundConsumer
from siammae.tracking.tracker import Tracked, Tracker


def _check_output_dir(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: output path exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError(f"{folder}: output folder is not empty (use --overwrite to replace its files)")
    _check_writable(folder)


def _check_output_file(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an output file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output file exists (use --overwrite to replace it)")
    _check_writable(path.parent)


def _check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove that a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".siammae-write-test."):
            pass
    except OSError as e:
        raise InputError(f"{folder}: cannot write there ({e.strerror or e})") from e


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


@dataclass
class _Sink:
    """What a run makes of each tracked frame.

    read_out(item): the frame's result from its soft labels (an id map, keypoints). write(item, result): its
    files. draw(rgb, result): the frame as the overlay shows it. summary(): what the report says about the tracked
    things. finish(status): once at the end however the run stopped ("complete" | "interrupted" | "error").
    """

    read_out: Callable[[Tracked], Any]
    write: Callable[[Tracked, Any], None]
    draw: Callable[[np.ndarray, Any], np.ndarray]
    summary: Callable[[], dict]
    finish: Callable[[str], None] = lambda status: None


def _require_output(out, overlay, report) -> None:
    if out is None and overlay is None and report is None:
        raise InputError("nothing to write: give an output folder (--out), an overlay video or a report")


def _check_outputs(out, overlay, report, overwrite: bool) -> dict:
    """Check every output path (creating ``out``) before the run; the paths by name."""
    if out is not None:
        _check_output_dir(Path(out), overwrite)
    for path in (overlay, report):
        if path is not None:
            _check_output_file(Path(path), overwrite)
    if report is not None:
        _check_output_file(Path(report).with_suffix(".md"), overwrite)
    return {"out": out, "overlay": overlay, "report": report}


def track_video(
    tracker: Tracker,
    video: str | os.PathLike | VideoSource,
    mask: str | os.PathLike | np.ndarray | None = None,
    *,
    mask_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Track the objects of ``mask`` (frame 0) and ``mask_dir`` (later frames) through ``video``.

    video: a video file or a frame folder. mask: frame 0's mask (file or id map); optional when ``mask_dir`` holds
    a mask named like frame 0. out: folder for one indexed PNG per frame (named like the frame). overlay: an h264
    video of the frames with the masks drawn on. report: a JSON report (with a Markdown twin beside it).
    Returns the report dict. Raises InputError / VideoError on bad input; KeyboardInterrupt after saving what
    was done.
    """
    _require_output(out, overlay, report)
    src = video if isinstance(video, VideoSource) else open_video(video)
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
    outputs = _check_outputs(out, overlay, report, overwrite)
    objects: set[int] = set()

    def write(item: Tracked, ids: np.ndarray) -> None:
        objects.update(int(i) for i in item.object_ids[1:])
        if out is not None:
            path = Path(out) / f"{item.frame.name}.png"
            try:
                write_mask(path, ids)
            except OSError as e:
                raise InputError(f"{path}: cannot write ({e.strerror or e})") from e

    sink = _Sink(tracker.read_out, write, overlay_masks, lambda: {"objects": sorted(objects)})
    return _run(tracker, src, mask, references, sink, outputs, progress)


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
    _require_output(out, overlay, report)
    src = video if isinstance(video, VideoSource) else open_video(video)
    size = (src.height, src.width)
    if isinstance(keypoints, (str, os.PathLike)):
        keypoints = read_keypoints(keypoints, size)
    elif not isinstance(keypoints, Keypoints):
        xy = np.asarray(keypoints, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
            raise InputError(f"keypoints must be a [J, 2] array of (x, y) pixels, got shape {xy.shape}")
        keypoints = Keypoints(xy=xy, names=tuple(str(j) for j in range(len(xy))))
    check_inside(keypoints, size, "first-frame keypoints")
    if np.isnan(keypoints.xy).all():
        raise InputError("first-frame keypoints: every point is null; give at least one [x, y]")
    grid = tracker.grid_size(*size)  # fails here, before any output, for an encoder built for another size
    heatmaps = keypoints_to_heatmaps(keypoints.xy, size, grid)  # (1 + J, h, w), channel 0 the background
    outputs = _check_outputs(out, overlay, report, overwrite)
    track = None
    if out is not None:
        info = {"video": str(src.path), "settings": _settings(tracker)}
        folder = Path(out)
        track = KeypointTrackWriter(folder / "keypoints.json", folder / "keypoints.jsonl", keypoints.names, size, info)

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

    sink = _Sink(read_out, write, draw_keypoints, lambda: {"keypoints": list(keypoints.names)}, finish)
    return _run(tracker, src, heatmaps, {}, sink, outputs, progress)


def _run(
    tracker: Tracker, src: VideoSource, first_labels, references: dict, sink: _Sink, outputs: dict, progress: bool
) -> dict:
    """Stream ``src`` through the tracker into ``sink`` and the overlay; write the report; return it."""
    overlay, report = outputs["overlay"], outputs["report"]
    device = tracker.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started, t_start = now_iso(), time.perf_counter()
    written = 0
    read_out_s = 0.0

    def write_frames(items: Iterator[tuple[Tracked, Any]]) -> Iterator[np.ndarray]:
        """Write each frame's outputs; yield its overlay image (runs in the writer thread)."""
        nonlocal written, read_out_s
        for item, result in items:
            if result is None:  # CPU: the read-out runs here, beside the encoder in the main thread
                t0 = time.perf_counter()
                result = sink.read_out(item)
                read_out_s += time.perf_counter() - t0
            sink.write(item, result)
            written += 1
            if overlay is not None:
                yield sink.draw(item.frame.rgb, result)

    def consume(items: Iterator) -> None:
        images = write_frames(items)
        if overlay is None:
            for _ in images:
                pass
            return
        first = next(images, None)
        if first is not None:  # no frame, no video
            try:
                write_video(overlay, itertools.chain([first], images), fps=src.fps or 25.0)
            except OSError as e:
                raise InputError(f"{overlay}: cannot write the overlay video ({e})") from e

    writer = BackgroundConsumer(consume, maxsize=2 * tracker.chunk, name="siammae-write")
    bar = _progress(src, progress)
    status, error, stop = "complete", None, None
    try:
        for item in tracker.stream(src, first_labels, references):
            # on a GPU the read-out is cheap there; on a CPU it moves to the writer thread
            result = sink.read_out(item) if device.type == "cuda" else None
            writer.put((item, result))
            bar.update(1)
    except KeyboardInterrupt as e:
        status, stop = "interrupted", e
    except InputError as e:  # e.g. a truncated video: the frames before the error are kept
        status, error, stop = "error", str(e), e
    except BaseException as e:
        status, error = "error", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        try:
            writer.close()  # writes every frame handed over, closes the overlay video
        except InputError as e:
            if stop is None:
                status, error, stop = "error", str(e), e
        finally:
            try:
                sink.finish(status)  # e.g. the keypoint track of the frames written
            except InputError as e:
                if stop is None:
                    status, error, stop = "error", str(e), e
            finally:
                times = tracker.times
                times.add("propagate", read_out_s)
                times.add("write", max(0.0, writer.busy_s - read_out_s))
                total = time.perf_counter() - t_start
                result = _report(tracker, src, outputs, started, total, written, sink.summary(), status, error)
                if report is not None:
                    write_report(report, result)
    if stop is not None:
        raise stop
    return result


def _settings(tracker: Tracker) -> dict:
    return {
        "preset": tracker.preset,
        "propagation": dict(vars(tracker.config)),
        "size": tracker.size,
        "chunk": tracker.chunk,
        "dtype": str(getattr(tracker.encoder, "dtype", "n/a")).replace("torch.", ""),
        "backend": tracker.backend,
        "encoder": type(tracker.encoder).__name__,
        "weights": _weights(tracker.encoder),
    }


def _weights(encoder) -> dict | None:
    """Which weights: load_model's record (name or path, sha256), or what an exported encoder's metadata says."""
    record = getattr(getattr(encoder, "model", None), "weights_info", None)
    if record is not None:
        return record
    info = getattr(encoder, "info", None)
    if getattr(info, "checkpoint_sha256", None):
        return {"weights": info.checkpoint, "sha256": info.checkpoint_sha256, "encoder": str(encoder.path)}
    return None


def _report(tracker, src, outputs, started, total, frames, summary, status, error) -> dict:
    try:
        H, W = tracker.frame_size(src.height, src.width)
    except InputError:  # an encoder built for another size: the run stopped on it, the report says so
        H, W = 0, 0
    return {
        "status": status,
        "interrupted": status == "interrupted",
        "error": error,
        "started": started,
        "frames": frames,
        "video": {
            "path": str(src.path),
            "kind": "folder" if src.is_folder else "video",
            "width": src.width,
            "height": src.height,
            "fps": src.fps,
            "frames_in_source": src.num_frames,
        },
        "processing": {
            "width": W,
            "height": H,
            "grid": [H // tracker.patch_size, W // tracker.patch_size],
            "patch_size": tracker.patch_size,
        },
        **summary,
        "settings": _settings(tracker),
        "outputs": {k: (str(v) if v is not None else None) for k, v in outputs.items()},
        "versions": versions(),
        "device": device_info(tracker.device),
        "time": {"total_seconds": round(total, 4), "stages": tracker.times.as_dict()},
        "fps": round(frames / total, 2) if total > 0 else None,
        "memory": {
            "peak_host_mib": round(peak_host_memory_mib(), 1),
            "peak_gpu_mib": _round(peak_gpu_memory_mib(tracker.device)),
        },
    }


def _round(x):
    return None if x is None else round(x, 1)


def _progress(src: VideoSource, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=src.num_frames, unit="frame", desc=src.path.name, disable=not enabled, dynamic_ncols=True, leave=False
    )


__all__ = ["Tracked", "track_keypoints_video", "track_video"]
