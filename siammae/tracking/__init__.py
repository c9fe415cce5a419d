"""Tracking objects (masks) and keypoints through long videos by label propagation: streamed, constant memory,
with reports.

- :mod:`~siammae.tracking.tracker`: :class:`Tracker`, the propagation driver with a decode thread and stage times.
- :mod:`~siammae.tracking.run`: :class:`TrackingRun`, one source streamed into one set of outputs (:class:`RunOutputs`).
- :mod:`~siammae.tracking.track`: :func:`track_video` / :func:`track_keypoints_video` and their sinks.
- :mod:`~siammae.tracking.manifest` and :mod:`~siammae.tracking.batch`: many videos (:func:`run_batch`).
- :mod:`~siammae.tracking.job`: what ``siammae-track`` runs (:class:`TrackJob`, :func:`load_tracker`).
- :mod:`~siammae.tracking.report`, :mod:`~siammae.tracking.overlay`, :mod:`~siammae.tracking.shard`.
"""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "BatchItem": "siammae.tracking.manifest",
    "read_manifest": "siammae.tracking.manifest",
    "run_batch": "siammae.tracking.batch",
    "track_many": "siammae.tracking.batch",
    "TrackJob": "siammae.tracking.job",
    "load_frame_encoder": "siammae.export.runtime",
    "load_tracker": "siammae.tracking.job",
    "RunOutputs": "siammae.tracking.run_outputs",
    "TrackingRun": "siammae.tracking.run",
    "MaskResizeWarning": "siammae.data.masks",
    "read_mask": "siammae.data.masks",
    "write_mask": "siammae.data.masks",
    "davis_palette": "siammae.data.palette",
    "draw_keypoints": "siammae.tracking.overlay",
    "overlay_masks": "siammae.tracking.overlay",
    "track_keypoints_video": "siammae.tracking.track",
    "track_video": "siammae.tracking.track",
    "Tracked": "siammae.tracking.tracker",
    "Tracker": "siammae.tracking.tracker",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
