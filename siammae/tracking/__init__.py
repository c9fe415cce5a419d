"""Tracking objects (masks) and keypoints through long videos by label propagation: streamed, constant memory,
with reports.

Three public ways to track (ARCHITECTURE.md): :class:`~siammae.propagation.driver.Tracker` (the library call,
re-exported here), :func:`track_video` (one run into files: masks or keypoints, overlay, report) and
:class:`TrackJob` (a ``siammae-track`` command line as data: one video or a batch).

- :mod:`~siammae.tracking.track`: :func:`track_video` and its sinks, over :mod:`~siammae.tracking.run` (the run:
  threads, outputs, report; internal).
- :mod:`~siammae.tracking.manifest` and :mod:`~siammae.tracking.batch`: many videos (internal: ``TrackJob`` runs them).
- :mod:`~siammae.tracking.job`: what ``siammae-track`` runs (:class:`TrackJob`, :func:`load_tracker`).
- :mod:`~siammae.tracking.report` (:class:`RunReport`), :mod:`~siammae.tracking.overlay`,
  :mod:`~siammae.tracking.shard`.
"""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "BatchItem": "siammae.tracking.manifest",
    "read_manifest": "siammae.tracking.manifest",
    "TrackJob": "siammae.tracking.job",
    "load_frame_encoder": "siammae.export.runtime",
    "load_tracker": "siammae.tracking.job",
    "RunOutputs": "siammae.tracking.run_outputs",
    "RunReport": "siammae.tracking.report",
    "MaskResizeWarning": "siammae.data.masks",
    "read_mask": "siammae.data.masks",
    "write_mask": "siammae.data.masks",
    "davis_palette": "siammae.data.palette",
    "draw_keypoints": "siammae.tracking.overlay",
    "overlay_masks": "siammae.tracking.overlay",
    "track_video": "siammae.tracking.track",
    "Tracked": "siammae.propagation.driver",
    "Tracker": "siammae.propagation.driver",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
