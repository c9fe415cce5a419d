"""One tracking run: a :class:`Tracker` streaming one source into one set of outputs.

    decode thread -> bounded queue -> Tracker (chunked encode, Propagator) -> bounded queue -> writer thread

A :class:`TrackingRun` owns everything that belongs to one run and not to the tracker: the writer thread, the
overlay video, the status, the stage times (:class:`~siammae.tracking.report.StageTimes`), the frame latencies
and the report. The tracker (model, preset, device) holds no per-run state, so one tracker can serve several runs,
one after the other or at once.

What to make of each tracked frame is a :class:`Sink` (masks, keypoints). The read-out (soft labels -> id map or
keypoints) runs where it is cheapest: on a GPU in the main thread, next to the labels; on a CPU in the writer
thread, beside the encoder. Either way its time counts as "propagate" and the rest of the writer's time as "write".

When the stream stops early (a truncated video, Ctrl-C, a full disk), every frame handed to the writer is still
written, the overlay is closed as a valid video of those frames, the sink finishes (e.g. the keypoint track's JSON),
the report is written with the status, and the first exception is raised again.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siammae.data.video import write_video
from siammae.errors import InputError
from siammae.tracking.report import (
    LatencyStats,
    StageTimes,
    device_info,
    now_iso,
    peak_gpu_memory_mib,
    peak_host_memory_mib,
    versions,
    write_report,
)
from siammae.tracking.stream import BackgroundConsumer
from siammae.tracking.tracker import Tracked, Tracker


@dataclass
class Sink:
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


class TrackingRun:
    """Stream ``src`` through ``tracker`` into ``sink``, the overlay video and the report.

    outputs: ``{"out": folder or None, "overlay": video path or None, "report": JSON path or None, ...}`` (checked
    by the caller before the run; a ``"folder"`` entry with a ``close()`` is a claim on the output folder, released
    once the report is written). ``run(first_labels, references)`` returns the report dict.
    """

    def __init__(self, tracker: Tracker, src, sink: Sink, outputs: dict, progress: bool = True):
        self.tracker, self.src, self.sink = tracker, src, sink
        self.outputs = {k: v for k, v in outputs.items() if k != "folder"}
        self._claim = outputs.get("folder")  # an output-folder claim (lock) to release when the run ends, if any
        self.progress = progress
        self.times = StageTimes()
        self.latency = LatencyStats()
        self.status, self.error = "complete", None
        self.written = 0
        self._stop: BaseException | None = None  # the first failure, raised again at the end
        self._read_out_s = 0.0
        self._read_out_in_main = tracker.device.type == "cuda"  # see the module docstring

    # ------------------------------------------------------------------------------------------------ run
    def run(self, first_labels, references: dict) -> dict:
        device = self.tracker.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.started, t0 = now_iso(), time.perf_counter()
        writer = BackgroundConsumer(self._consume, maxsize=2 * self.tracker.chunk, name="siammae-write")
        self._guard(self._feed, writer, first_labels, references)
        self._guard(writer.close)  # writes every frame handed over, closes the overlay video
        self._guard(self.sink.finish, self.status)  # e.g. the keypoint track of the frames written
        self.times.add("propagate", self._read_out_s)
        in_writer = 0.0 if self._read_out_in_main else self._read_out_s
        self.times.add("write", max(0.0, writer.busy_s - in_writer))
        self.total_s = time.perf_counter() - t0
        report = self.report()
        try:
            if self.outputs.get("report") is not None:
                write_report(self.outputs["report"], report)
        finally:
            if self._claim is not None:
                self._claim.close()
        if self._stop is not None:
            raise self._stop
        return report

    def _guard(self, step: Callable, *args) -> None:
        """Run one step of the run; a failure is recorded (the first one sets the status) and the run goes on to
        close what it opened."""
        try:
            step(*args)
        except BaseException as e:  # noqa: BLE001 -- raised again by run() once the outputs are closed
            if self._stop is not None:
                return
            self._stop = e
            if isinstance(e, KeyboardInterrupt):
                self.status = "interrupted"
            else:  # e.g. a truncated video: the frames before the error are kept
                self.status = "error"
                self.error = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"

    def _feed(self, writer: BackgroundConsumer, first_labels, references: dict) -> None:
        """Main thread: the tracker's frames (and on a GPU their read-out) to the writer thread."""
        stream = self.tracker.stream(self.src, first_labels, references, times=self.times)
        with _progress(self.src, self.progress) as bar, contextlib.closing(stream):  # closed now: decode time counted
            for item in stream:
                writer.put((item, self._read_out(item) if self._read_out_in_main else None))
                bar.update(1)

    def _read_out(self, item: Tracked):
        t0 = time.perf_counter()
        result = self.sink.read_out(item)
        self._read_out_s += time.perf_counter() - t0  # only ever one thread reads out in a run
        return result

    # ------------------------------------------------------------------------------------- writer thread
    def _consume(self, items: Iterator[tuple[Tracked, Any]]) -> None:
        images = self._write(items)
        overlay = self.outputs.get("overlay")
        if overlay is None:
            for _ in images:
                pass
            return
        first = next(images, None)
        if first is None:  # no frame, no video
            return
        try:
            write_video(overlay, itertools.chain([first], images), fps=self.src.fps or 25.0)
        except OSError as e:
            raise InputError(f"{overlay}: cannot write the overlay video ({e})") from e

    def _write(self, items: Iterator[tuple[Tracked, Any]]) -> Iterator[np.ndarray]:
        """Write each frame's outputs; yield its overlay image when there is an overlay."""
        overlay = self.outputs.get("overlay") is not None
        for item, result in items:
            if result is None:
                result = self._read_out(item)
            self.sink.write(item, result)
            self.written += 1
            if item.frame.arrival is not None:
                self.latency.add(time.perf_counter() - item.frame.arrival)
            if overlay:
                yield self.sink.draw(item.frame.rgb, result)

    # ------------------------------------------------------------------------------------------- report
    def report(self) -> dict:
        tracker, src, frames, total = self.tracker, self.src, self.written, self.total_s
        try:
            H, W = tracker.frame_size(src.height, src.width)
        except InputError:  # an encoder built for another size: the run stopped on it, the report says so
            H, W = 0, 0
        report = {
            "status": self.status,
            "interrupted": self.status == "interrupted",
            "error": self.error,
            "started": self.started,
            "frames": frames,
            "video": source_info(src),
            "processing": {
                "width": W,
                "height": H,
                "grid": [H // tracker.patch_size, W // tracker.patch_size],
                "patch_size": tracker.patch_size,
            },
            **self.sink.summary(),
            "settings": settings(tracker),
            "outputs": {k: (str(v) if v is not None else None) for k, v in self.outputs.items()},
            "versions": versions(),
            "device": device_info(tracker.device),
            "time": {"total_seconds": round(total, 4), "stages": self.times.as_dict()},
            "fps": round(frames / total, 2) if total > 0 else None,
            "latency": self.latency.as_dict(),
            "memory": {
                "peak_host_mib": round(peak_host_memory_mib(), 1),
                "peak_gpu_mib": _round(peak_gpu_memory_mib(tracker.device)),
            },
        }
        dropped = getattr(src, "dropped", None)
        if dropped is not None:  # a live source read in real time
            report["dropped"] = {"frames": dropped.count, "indices": dropped.ranges()}
        return report


def settings(tracker: Tracker) -> dict:
    return {**tracker.settings(), "weights": _weights(tracker.encoder)}  # Driver.settings: preset + run options


def _weights(encoder) -> dict | None:
    """Which weights: load_model's record (name or path, sha256), or what an exported encoder's metadata says."""
    record = getattr(getattr(encoder, "model", None), "weights_info", None)
    if record is not None:
        return record
    info = getattr(encoder, "info", None)
    if getattr(info, "checkpoint_sha256", None):
        return {"weights": info.checkpoint, "sha256": info.checkpoint_sha256, "encoder": str(encoder.path)}
    return None


def source_info(src) -> dict:
    live = getattr(src, "is_live", False)
    return {
        "path": str(src.path),
        "kind": "live" if live else "folder" if src.is_folder else "video",
        "width": src.width,
        "height": src.height,
        "fps": src.fps,
        "frames_in_source": src.num_frames,
    }


def _round(x):
    return None if x is None else round(x, 1)


def _progress(src, enabled: bool):
    from tqdm import tqdm

    name = Path(str(src.path)).name or str(src.path)
    return tqdm(total=src.num_frames, unit="frame", desc=name, disable=not enabled, dynamic_ncols=True, leave=False)
