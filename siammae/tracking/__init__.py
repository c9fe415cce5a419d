"""Tracking objects (masks) and keypoints through long videos by label propagation: streamed, constant memory,
with reports."""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "MaskResizeWarning": "siammae.data.masks",
    "read_mask": "siammae.data.masks",
    "write_mask": "siammae.data.masks",
    "davis_palette": "siammae.data.palette",
    "draw_keypoints": "siammae.tracking.overlay",
    "overlay_masks": "siammae.tracking.overlay",
    "track_keypoints_video": "siammae.tracking.pipeline",
    "track_video": "siammae.tracking.pipeline",
    "Tracked": "siammae.tracking.tracker",
    "Tracker": "siammae.tracking.tracker",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
