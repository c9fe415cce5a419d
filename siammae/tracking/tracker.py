"""Tracking objects through a video of any length by label propagation, streamed.

A :class:`Tracker` is the propagation :class:`~siammae.propagation.driver.Driver` (the one path from frames to
masks that evaluation runs too) with decoding and resizing moved to a background thread and stage timings:

    decode + resize thread --(bounded queue)--> chunk of frames --encoder--> (T, h, w, D) --Propagator--> (T, C, h, w)

so at most ``2 * chunk`` decoded frames, one chunk of features and the propagator's state (reference frames and
the last n frames at patch resolution) exist at any time, whatever the video's length. SAM 2 preloads every frame
of a video; this never does. A live source decodes and resizes in its own reader thread
(:meth:`siammae.data.live.LiveSource.read`), so a live frame crosses one thread boundary before the encoder.
``tracker.track(frames, first_mask)`` yields ``(frame_index, id_map)``; ``track_soft`` yields the soft labels
instead, for other read-outs (keypoints).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

from siammae.background import BackgroundReader
from siammae.data.video import Frame
from siammae.propagation.driver import Driver, MaskLike, Tracked
from siammae.propagation.inputs import resize_frame
from siammae.tracking.report import StageTimes

__all__ = ["DEFAULT_CHUNK", "MaskLike", "Tracked", "Tracker"]

DEFAULT_CHUNK = 8  # frames per encoder call; 1 for a real-time live source (a chunk would wait for its frames)


class Tracker(Driver):
    """Track objects given by a first-frame mask through a video, in constant memory.

    The arguments are the :class:`~siammae.propagation.driver.Driver`'s: ``model`` (a SiamMAE / ViTEncoder or any
    FrameEncoder: ONNX / TensorRT runtimes; :func:`siammae.tracking.load_tracker` loads one by name as
    ``siammae-track`` does), ``preset`` (propagation constants and input convention), ``size`` (a short side or a
    fixed size; default the preset's), ``device``, ``dtype``, ``chunk``, ``backend`` and propagation ``overrides``
    (``topk=7``, ``temperature``, ``n_last``, ``radius``, ...). ``chunk`` left out is :data:`DEFAULT_CHUNK`, and 1
    for a live source read in real time (:meth:`chunk_for`).
    ``times`` holds the stage timings of the last stream run without its own ``times`` (``track``, ``track_soft``).
    """

    def __init__(self, model, preset=None, *, chunk: int | None = None, **kwargs):
        # preset: a name, a Preset, or None (the default preset of masks)
        super().__init__(model, preset, chunk=DEFAULT_CHUNK if chunk is None else chunk, **kwargs)
        self.chunk_given = chunk is not None
        self.times = StageTimes()

    def chunk_for(self, frames) -> int:
        """Frames per encoder call for ``frames``: ``chunk``, or 1 for a real-time live source when no chunk was
        given (a chunk waits for all its frames: real time tracks each frame as it comes)."""
        if not self.chunk_given and getattr(frames, "realtime", False):
            return 1
        return self.chunk

    def track(
        self, frames, first_mask: MaskLike, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, id_map)`` for every frame, frame 0 included (see :meth:`Driver.masks`)."""
        return self.masks(frames, first_mask, references)

    def track_soft(
        self, frames, first_labels, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(frame_index, soft)`` with soft (C, h, w) fp32 labels at patch resolution (see
        :meth:`Driver.soft`)."""
        return self.soft(frames, first_labels, references)

    def stream(self, frames, first_labels, references=None, times: StageTimes | None = None) -> Iterator[Tracked]:
        """:meth:`Driver.stream` with decoding and resizing in a background thread.

        times: where the stream adds its decode / encode / propagate seconds and frames (a run's own, so that one
        Tracker can serve several streams at once); by default a new one, kept as ``self.times``.
        """
        if times is None:
            self.times = times = StageTimes()
        chunk = self.chunk_for(frames)
        if callable(getattr(frames, "read", None)) and getattr(frames, "is_live", False):
            source = frames.read(self._prepare)  # decoded and resized in the live source's reader thread
        else:
            source = BackgroundReader(self.inputs_of(frames), maxsize=2 * chunk, name="siammae-decode")
        try:
            yield from self.propagate(source, first_labels, references, times, chunk=chunk)
        finally:
            source.close()
            times.add("decode", source.busy_s)

    def _prepare(self, frame: Frame) -> tuple[Frame, np.ndarray]:
        """One frame as :meth:`Driver.inputs_of` prepares it: (frame, encoder input at ``frame_size``)."""
        return frame, resize_frame(frame.rgb, self.frame_size(*frame.rgb.shape[:2]), self.inputs.resize)
