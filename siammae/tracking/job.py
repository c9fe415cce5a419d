"""What ``siammae-track`` runs, as one library call: a :class:`TrackJob` checked up front, then run.

:meth:`TrackJob.check` validates everything that can be validated without torch or a model (inputs exist, the
first mask is an image, option combinations, outputs free or ``overwrite``) in well under a second, so
a typo fails at once instead of after the model loads. :meth:`TrackJob.run` then loads the model as the command does
(:func:`load_tracker`) and calls :func:`~siammae.tracking.track.track_video` (masks or keypoints) or
:func:`~siammae.tracking.batch.run_batch`.

The policy lives in the library, not the command, so that Python callers get the same behaviour:
:func:`load_tracker` (default weights, weights fetched once per machine under torchrun, ONNX / TensorRT encoders,
the keypoint preset), :meth:`Tracker.chunk_for <siammae.propagation.driver.Tracker.chunk_for>` (real time tracks
frame by frame), :func:`~siammae.tracking.run_outputs.default_out` (where outputs go when none is given).

This module imports neither torch nor the model until :meth:`TrackJob.run`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from siammae.errors import CheckpointError, InputError

LIVE_OPTIONS = ("realtime", "max_frames", "duration", "format")


def default_preset(keypoints: bool) -> str:
    """The preset when none is given: the registry's default for the task (keypoints or masks)."""
    from siammae.propagation.config import default_preset as for_task

    return for_task("keypoints" if keypoints else "masks")


def load_tracker(
    ckpt=None,
    *,
    encoder=None,
    arch=None,
    preset: str | None = None,
    keypoints: bool = False,
    device: str = "auto",
    rank=None,
    progress: bool = True,
    choice=None,
    **kwargs,
):
    """A :class:`~siammae.propagation.driver.Tracker` as ``siammae-track`` builds it: the model of the one loader
    (:func:`siammae.export.runtime.load_frame_encoder`: ``ckpt`` None is the default weights, or the shipped model
    when they cannot be had; ``choice``: the :class:`~siammae.model.load.WeightsChoice` a job's check made) on this
    rank's device (``cuda:LOCAL_RANK`` under torchrun), ``preset`` or :func:`default_preset`; ``kwargs`` are the
    Tracker's (``dtype``, ``size``, ``chunk``, ``backend``, propagation overrides)."""
    from siammae.export.runtime import load_frame_encoder
    from siammae.model.load import resolve_run
    from siammae.propagation.driver import Tracker

    device = rank.device(device) if rank is not None else device
    if encoder is None:
        resolve_run(device, kwargs.get("dtype", "fp32"))  # no GPU, fp16 on a CPU: before the weights load
    model = load_frame_encoder(ckpt, encoder, arch=arch, device=device, rank=rank, progress=progress, choice=choice)
    return Tracker(model, preset=preset or default_preset(keypoints), device=device, **kwargs)


@dataclass(frozen=True)
class TrackJob:
    """One ``siammae-track`` command line, as data. Single video: ``videos`` holds one path (file, frame folder or
    live source); several, a folder of videos, or ``manifest``: a batch. See ``siammae-track --help`` for each
    field; ``overrides`` are the preset overrides (``topk``, ``temperature``, ``n_last``, ``radius``)."""

    videos: tuple[str, ...] = ()
    manifest: Path | None = None
    mask: Path | None = None
    mask_dir: Path | None = None
    keypoints: Path | None = None
    ckpt: str | None = None
    arch: str | None = None
    encoder: Path | None = None
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    size: int | tuple[int, int] | None = None
    device: str = "auto"
    dtype: str = "fp32"
    chunk: int | None = None
    backend: str = "auto"
    out: Path | None = None
    overlay: Path | None = None
    report: Path | None = None
    jsonl: Path | None = None
    overlays: bool = False
    format: str | None = None
    realtime: bool = False
    max_frames: int | None = None
    duration: float | None = None
    overwrite: bool = False
    progress: bool = True

    # ---------------------------------------------------------------------------------------------- kind
    @property
    def batch(self) -> bool:
        from siammae.tracking.manifest import is_batch_input

        return self.manifest is not None or is_batch_input(list(self.videos))

    @property
    def live(self) -> bool:
        from siammae.data.live import is_live

        return len(self.videos) == 1 and is_live(self.videos[0], self.format)

    def _live_given(self) -> bool:
        return bool(self.realtime or self.max_frames or self.duration or self.format)

    def outputs(self):
        """The single video's :class:`~siammae.tracking.run_outputs.RunOutputs`, the default ``out`` when none given."""
        from siammae.tracking.run_outputs import RunOutputs

        given = RunOutputs.of(self.out, self.overlay, self.report, self.jsonl)
        return given.or_default(self.videos[0], self.keypoints is not None)

    # --------------------------------------------------------------------------------------------- check
    def check(self) -> TrackJob:
        """Everything checkable without torch or a model (module docstring); InputError naming the problem."""
        from siammae.model.load import check_input_size, check_run

        check_run(self.device, self.dtype)  # --device cuda with no GPU, fp16 on a CPU: at once
        check_input_size(self.size)
        if self.batch:
            self._check_batch()
        else:
            self._check_single()
        self._check_model()  # the weights last: every input is checked before the offline-weights error
        return self

    def _check_single(self) -> None:
        if not self.videos:
            raise InputError("give a VIDEO (file, frame folder, live source), several, or --manifest FILE")
        (video,) = self.videos
        if not self.live and self._live_given():
            raise InputError(f"--format, --realtime, --max-frames and --duration are for live sources, not {video}")
        if self.overlays:
            raise InputError("--overlays is for many videos; give --overlay FILE for one")
        if self.keypoints is not None and self.jsonl is not None:
            raise InputError("with --keypoints, --out already holds keypoints.jsonl; --jsonl is for masks")
        if self.keypoints is not None and (self.mask is not None or self.mask_dir is not None):
            raise InputError("give either --keypoints or --mask / --mask-dir, not both")
        if self.keypoints is None and self.mask is None and self.mask_dir is None:
            raise InputError("give what to track in frame 0: --mask (or --mask-dir) or --keypoints")
        if not self.live:
            from siammae.data.video import _check_source

            _check_source(Path(video))  # exists, and is a frame folder or has a video extension
        self._check_given_inputs()
        self.outputs().check_free(self.overwrite)

    def _check_given_inputs(self) -> None:
        if self.mask_dir is not None and not Path(self.mask_dir).is_dir():
            raise InputError(f"--mask-dir {self.mask_dir}: no such folder")
        if self.mask is not None and self.live:
            from siammae.data.masks import mask_size

            mask_size(self.mask)  # exists and is an image (a live source has no frame to check it against yet)
        elif not self.live and self.keypoints is None:
            import warnings

            from siammae.data.masks import MaskResizeWarning, first_masks
            from siammae.data.video import open_video

            # the masks against the video (an empty mask, another aspect ratio, names that match no frame) before
            # the model loads: the video's header only (a folder: its first frame), the masks are small PNGs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MaskResizeWarning)  # the run warns, once
                _, later = first_masks(self.mask, self.mask_dir, open_video(self.videos[0]))
            _check_mask_contents(later)
        if self.keypoints is not None:
            from siammae.data.keypoints import read_keypoints

            read_keypoints(self.keypoints)  # exists, JSON, the schema (the bounds need the video: checked in the run)

    def _check_batch(self) -> None:
        if self._live_given() or self.jsonl is not None:
            raise InputError("--format, --realtime, --max-frames, --duration and --jsonl are for one live source")
        if self.out is None:
            raise InputError("several videos need --out (one folder per video is made under it)")
        if self.mask is not None or self.overlay is not None or self.report is not None:
            raise InputError(
                "with several videos, give masks with --mask-dir ROOT (ROOT/<video name>/) or a --manifest; overlays "
                "with --overlays; each video's report is written in its folder"
            )
        if self.manifest is not None and self.videos:
            raise InputError("give videos or --manifest, not both")
        from siammae.tracking.manifest import check_batch_folder

        check_batch_folder(self.out, self.items, self.overwrite)  # every name; --out usable (removes nothing)

    def _check_model(self) -> None:
        if self.ckpt is not None and self.encoder is not None:
            raise InputError("give --ckpt (PyTorch weights) or --encoder (model.onnx / model.engine), not both")
        if self.encoder is not None and not Path(self.encoder).is_file():
            raise CheckpointError(f"{self.encoder}: no such file (an exported encoder: model.onnx / model.engine)")
        from siammae.propagation.config import check_attention_override

        check_attention_override(self.encoder, self.overrides)
        if self.encoder is None:
            self.weights  # noqa: B018  (a missing file or an unknown name, or the default's fallback: no torch)

    @cached_property
    def weights(self):
        """The :class:`~siammae.model.load.WeightsChoice` of ``ckpt`` (None: the default weights, or the shipped
        model when they cannot be had), made once, without torch or a download."""
        from siammae.model.load import choose_weights

        return choose_weights(self.ckpt)

    @cached_property
    def items(self) -> list:
        """The batch's videos, read once (the manifest or the command line), for the check and the run."""
        from siammae.tracking.manifest import expand_inputs, read_manifest

        if self.manifest is not None:
            return read_manifest(self.manifest)
        return expand_inputs(list(self.videos), self.mask_dir, self.keypoints)

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        """Check, load the model, track: the report (one video) or the summary (a batch)."""
        self.check()
        tracker_args = dict(encoder=self.encoder, arch=self.arch, device=self.device, dtype=self.dtype,
                            size=self.size, chunk=self.chunk, backend=self.backend, progress=self.progress,
                            choice=None if self.encoder is not None else self.weights, **self.overrides)  # fmt: skip
        if self.batch:
            return self._run_batch(tracker_args)
        outputs = self.outputs()
        common = dict(out=outputs.out, overlay=outputs.overlay, report=outputs.report, overwrite=self.overwrite,
                      progress=self.progress)  # fmt: skip
        source = self.videos[0]
        # standard input is sniffed (an MP4 with its index last) before the model loads, so that it fails at once;
        # a camera or network stream opens after it, so that its first frames do not wait for the model
        early = self.live and source == "-"
        if early:
            source = self._open_live()
        elif not self.live and self.progress and self.encoder is None:
            hint = self.cpu_hint()
            if hint is not None:
                print(f"note: {hint}", file=sys.stderr)  # once, before the model loads: the run's first update waits
        tracker = load_tracker(self.ckpt, preset=self.preset, keypoints=self.keypoints is not None, **tracker_args)
        if self.live and not early:
            source = self._open_live()
        from siammae.tracking.track import track_video

        if self.keypoints is not None:
            return track_video(tracker, source, keypoints=self.keypoints, **common)
        return track_video(tracker, source, self.mask, mask_dir=self.mask_dir, jsonl=outputs.jsonl, **common)

    def cpu_hint(self) -> str | None:
        """On a CPU, when one video's run will take long: what it will take and what is faster (:func:`cpu_hint`);
        None otherwise (a GPU, a short run, weights of unknown size)."""
        from siammae.model.load import gpu_absent
        from siammae.model.weights import WEIGHTS

        on_cpu = self.device == "cpu" or (self.device == "auto" and gpu_absent() is not None)
        w = WEIGHTS.get(self.weights.spec)
        if not on_cpu or w is None:
            return None
        from siammae.data.video import open_video
        from siammae.propagation.config import get_preset

        video = open_video(self.videos[0])
        preset = get_preset(self.preset or default_preset(self.keypoints is not None), size=self.size)
        return cpu_hint(video.num_frames, (video.height, video.width), preset, w, os.cpu_count() or 1)

    def _open_live(self):
        from siammae.data.live import open_source

        return open_source(self.videos[0], self.format, realtime=self.realtime, max_frames=self.max_frames,
                           duration=self.duration)  # fmt: skip

    def _run_batch(self, tracker_args: dict) -> dict:
        from siammae.torchrun import current_rank
        from siammae.tracking.batch import run_batch

        rank = current_rank()
        items = self.items
        keypoints = all(i.keypoints for i in items)
        progress = self.progress and rank.rank == 0
        tracker = load_tracker(self.ckpt, preset=self.preset, keypoints=keypoints, rank=rank,
                               **{**tracker_args, "progress": progress})  # fmt: skip
        return run_batch(tracker, items, self.out, rank=rank, overlay=self.overlays, overwrite=self.overwrite,
                         progress=progress)  # fmt: skip

    def replace(self, **changes) -> TrackJob:
        return dataclasses.replace(self, **changes)


# What a CPU run takes: the default (dino-vits16, 480x880, 1650 patches) ran 0.36 frames/s on a 2-core CPU, and
# --size 240 (240x416) 1.9-2.8 frames/s (issue 29, a fresh clone). The encoder's work grows with the patches and the
# square of the width (its linear layers dominate at these sizes), and shrinks with the cores.
CPU_RATE = 0.36  # frames/s, the default on 2 cores
SMALL_SIZE, SMALL_RATE = 240, "1.9-2.8 frames/s"
LONG_RUN_S = 600.0  # a run estimated longer than this on a CPU says what is faster, once


def cpu_estimate_s(frames: int, hw: tuple[int, int], patch: int, dim: int, depth: int, cores: int) -> float:
    """Seconds to track ``frames`` frames of encoder input ``hw`` on ``cores`` CPU cores with a ViT of ``patch``,
    width ``dim`` and ``depth`` blocks: the measured default rate (:data:`CPU_RATE`) scaled by the work."""
    patches = (hw[0] // patch) * (hw[1] // patch)
    work = patches / 1650 * (dim / 384) ** 2 * depth / 12
    return frames * work / CPU_RATE * 2 / max(cores, 1)


def cpu_hint(frames: int | None, video_hw: tuple[int, int], preset, w, cores: int) -> str | None:
    """What a run of ``frames`` frames of ``video_hw`` will take with ``preset`` and the named weights ``w`` on
    ``cores`` CPU cores, and what is faster, when over :data:`LONG_RUN_S`; else None."""
    if not frames:
        return None
    hw = preset.inputs.frame_size(*video_hw, w.patch_size)
    seconds = cpu_estimate_s(frames, hw, w.patch_size, w.embed_dim, w.depth, cores)
    if seconds < LONG_RUN_S:
        return None
    faster = ""
    if min(hw) > SMALL_SIZE:
        small = preset.replace(size=SMALL_SIZE).inputs.frame_size(*video_hw, w.patch_size)
        speedup = seconds / cpu_estimate_s(frames, small, w.patch_size, w.embed_dim, w.depth, cores)
        faster = (f"; --size {SMALL_SIZE} is about {speedup:.0f}x faster ({SMALL_RATE} measured on a 2-core CPU), "
                  "at some cost in accuracy")  # fmt: skip
    return (
        f"{frames} frames at {hw[0]}x{hw[1]} on this CPU will take about {seconds / 60:.0f} min (the default weights "
        f"run {CPU_RATE} frames/s at 480x880 on 2 cores){faster}; a GPU (--device cuda) is far faster"
    )


def _check_mask_contents(masks: dict) -> None:
    """Every later mask of ``--mask-dir`` read and checked as the run will (an image of ids, at least one object),
    before the model loads: a bad mask at frame 500 fails now, not after the weights and 499 frames."""
    from siammae.data.masks import check_objects, read_mask

    for path in masks.values():
        check_objects(read_mask(path), path)


__all__ = ["TrackJob", "default_preset", "load_tracker"]
