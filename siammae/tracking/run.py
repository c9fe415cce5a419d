"""One tracking run: a :class:`~siammae.propagation.driver.Tracker` streaming one source into one set of outputs.

    reader thread (decode, resize) -> bounded queue -> main thread (chunked encode, Propagator) -> bounded queue
    -> writer thread (PNGs / keypoint track, overlay video)

A :class:`TrackingRun` owns everything that belongs to one run and not to the tracker: its outputs
(:class:`RunOutputs`, checked and claimed before the first frame by :func:`claim_outputs`), the writer thread, the
overlay video, the status, the stage times (the timer it hands the tracker's stream), the frame latencies and the
report (:class:`~siammae.tracking.report.RunReport`). The tracker (model, preset, device)
holds no per-run state, so one tracker can serve several runs, one after the other or at once. What to make of each
tracked frame is a sink (:class:`~siammae.tracking.track.MaskSink`, :class:`~siammae.tracking.track.KeypointSink`).

The read-out (soft labels -> id map or keypoints) runs where it is cheapest: on a GPU in the main thread, next to
the labels; on a CPU in the writer thread, beside the encoder. Its time is the ``read_out`` stage of that thread.

When the stream stops early (a truncated video, Ctrl-C, a full disk), every frame handed to the writer is still
written, the overlay is closed as a valid video of those frames, the sink finishes (e.g. the keypoint track's JSON),
the report is written with the status, the claim on ``--out`` is released, and the first exception is raised again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from siammae.background import BackgroundWriter
from siammae.data.live import LiveSource
from siammae.data.video import VideoSource, check_video_output, write_video
from siammae.errors import InputError
from siammae.memory import check_encoder_fits
from siammae.output_folder import OutputFolder
from siammae.propagation.driver import Tracked, Tracker
from siammae.propagation.features import TorchEncoder
from siammae.tracking.report import (
    LatencyStats,
    Memory,
    Processing,
    RunReport,
    RunSettings,
    SourceInfo,
    StageTimes,
    device_info,
    now_iso,
    peak_gpu_memory_mib,
    peak_host_memory_mib,
    versions,
)
from siammae.tracking.run_outputs import OWNED_OUTPUTS, RunOutputs, check_output_files


def claim_outputs(outputs: RunOutputs, overwrite: bool, tracker: Tracker, src) -> OutputFolder | None:
    """Before the first frame: memory for a chunk of frames, a writable overlay format, free output files; then
    the claim on ``out`` (:class:`~siammae.output_folder.OutputFolder`: one writer, no planted links, ``--overwrite``
    leaves this run's outputs only), released by :meth:`TrackingRun.run`."""
    H, W = tracker.frame_size(src.height, src.width)
    chunk = tracker.chunk_for(src)
    what = f"{src.path} at {H}x{W} (height x width)"
    check_encoder_fits(tracker.encoder, H, W, chunk, tracker.device, what, context_frames=tracker.config.n_last + 1)
    if outputs.overlay is not None:
        check_video_output(outputs.overlay, "--overlay")
    files = outputs.files()
    if outputs.out is None:
        check_output_files(files, overwrite)
        return None
    # the overlay and report may sit in --out: --overwrite replaces them there too
    folder = OutputFolder(outputs.out, overwrite=overwrite, exclusive=True, owned=outputs.owned())
    return folder.open(lambda: check_output_files(files, overwrite))


class Sink(Protocol):
    """What a run makes of each tracked frame (:mod:`siammae.tracking.track` has the two: masks, keypoints)."""

    def read_out(self, item: Tracked) -> Any:
        """The frame's result from its soft labels (an id map, keypoints)."""

    def write(self, item: Tracked, result: Any) -> None:
        """The frame's files."""

    def draw(self, rgb: np.ndarray, result: Any) -> np.ndarray:
        """The frame as the overlay shows it."""

    def summary(self) -> dict:
        """What the report says about the tracked things: ``{"objects": ids}`` or ``{"keypoints": names}``."""

    def finish(self, status: str) -> None:
        """Once at the end, however the run stopped ("complete" | "interrupted" | "error")."""


class TrackingRun:
    """Stream ``src`` through ``tracker`` into ``sink``, the overlay video and the report.

    outputs: where (checked by :func:`claim_outputs` before the run); claim: the claim on ``outputs.out`` (an
    :class:`~siammae.output_folder.OutputFolder`), released once the report is written.
    ``run(first_labels, references)`` returns the :class:`~siammae.tracking.report.RunReport`.
    """

    def __init__(self, tracker: Tracker, src, sink: Sink, outputs: RunOutputs, claim=None, progress: bool = True):
        self.tracker, self.src, self.sink, self.outputs, self.progress = tracker, src, sink, outputs, progress
        self._claim = claim
        self.times = StageTimes()
        self.latency = LatencyStats()
        self.status, self.error = "complete", None
        self.written = 0
        self.total_s = 0.0
        self._stop: BaseException | None = None  # the first failure, raised again at the end
        self._read_out_s = 0.0
        self._read_out_in_main = tracker.device.type == "cuda"  # see the module docstring
        if not self._read_out_in_main:
            self.times.threads["read_out"] = "writer"

    # ------------------------------------------------------------------------------------------------ run
    def run(self, first_labels, references: dict) -> RunReport:
        device = self.tracker.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.started, t0 = now_iso(), time.perf_counter()
        writer = BackgroundWriter(self._consume, maxsize=2 * self.tracker.chunk_for(self.src), name="siammae-write")
        self._guard(self._feed, writer, first_labels, references)
        self._guard(writer.close)  # writes every frame handed over, closes the overlay video
        self._guard(self.sink.finish, self.status)  # e.g. the keypoint track of the frames written
        self.times.add("read_out", self._read_out_s)
        in_writer = 0.0 if self._read_out_in_main else self._read_out_s
        self.times.add("write", max(0.0, writer.busy_s - in_writer))
        self.total_s = time.perf_counter() - t0
        report = self.report()
        try:
            if self.outputs.report is not None:
                report.write(self.outputs.report)
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

    def _feed(self, writer: BackgroundWriter, first_labels, references: dict) -> None:
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
        overlay = self.outputs.overlay
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
        overlay = self.outputs.overlay is not None
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
    def report(self) -> RunReport:
        tracker, src, frames, total = self.tracker, self.src, self.written, self.total_s
        try:
            H, W = tracker.frame_size(src.height, src.width)
        except InputError:  # an encoder built for another size: the run stopped on it, the report says so
            H, W = 0, 0
        live = src if isinstance(src, LiveSource) else None
        status = self.status
        if status == "complete" and live is not None and live.gaps:  # every frame decoded was tracked, with holes
            status = "input-gaps"
        dropped = None if live is None else live.dropped  # a live source read in real time counts what it skipped
        summary = self.sink.summary()
        return RunReport(
            status=status,
            error=self.error,
            started=self.started,
            frames=frames,
            video=source_info(src),
            processing=Processing(W, H, (H // tracker.patch_size, W // tracker.patch_size), tracker.patch_size),
            settings=settings(tracker, tracker.chunk_for(src)),
            outputs=self.outputs.as_report(),
            versions=versions(),
            device=device_info(tracker.device),
            time=self.times.timing(total),
            fps=round(frames / total, 2) if total > 0 else None,
            latency=self.latency.summary(),
            memory=Memory(round(peak_host_memory_mib(), 1), _round(peak_gpu_memory_mib(tracker.device))),
            objects=None if "objects" not in summary else tuple(summary["objects"]),
            keypoints=None if "keypoints" not in summary else tuple(summary["keypoints"]),
            gaps=None if live is None else live.gaps.as_dict(),  # a live source: its damage (none: zeros)
            dropped=None if dropped is None else {"frames": dropped.count, "indices": dropped.ranges()},
        )


def settings(tracker: Tracker, chunk: int | None = None) -> RunSettings:
    """The settings a report records: the preset's record, the run options and the weights' provenance."""
    return RunSettings(
        preset=json.loads(json.dumps(tracker.preset.record())),  # as report.json holds it (tuples as lists)
        chunk=tracker.chunk if chunk is None else chunk,  # this stream's own (a real-time source: frame by frame)
        dtype=tracker.dtype_name(),
        backend=tracker.backend,
        encoder=type(tracker.encoder).__name__,
        weights=_weights(tracker.encoder),
    )


def _weights(encoder) -> dict | None:
    """Which weights: load_model's record (name or path, sha256), or what an exported encoder's metadata says."""
    if isinstance(encoder, TorchEncoder):
        provenance = encoder.model.provenance
        return None if provenance is None else provenance.to_dict()
    info = encoder.info
    if info is not None and info.checkpoint_sha256:
        return {"weights": info.checkpoint, "sha256": info.checkpoint_sha256, "encoder": str(encoder.path)}
    return None


def source_info(src: VideoSource | LiveSource) -> SourceInfo:
    kind = "live" if isinstance(src, LiveSource) else "folder" if src.is_folder else "video"
    return SourceInfo(str(src.path), kind, src.width, src.height, src.fps, src.num_frames)


def _round(x):
    return None if x is None else round(x, 1)


def _progress(src, enabled: bool):
    from tqdm import tqdm

    name = Path(str(src.path)).name or str(src.path)
    return tqdm(total=src.num_frames, unit="frame", desc=name, disable=not enabled, dynamic_ncols=True, leave=False)


__all__ = ["OWNED_OUTPUTS", "RunOutputs", "Sink", "TrackingRun", "claim_outputs", "settings"]
