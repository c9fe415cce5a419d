"""Tracking objects through long videos by label propagation: streamed, constant memory, with reports."""

from siammae.tracking.masks import MaskResizeWarning, read_mask, write_mask
from siammae.tracking.overlay import overlay_masks
from siammae.tracking.palette import davis_palette
from siammae.tracking.pipeline import track_video
from siammae.tracking.tracker import Tracked, Tracker

__all__ = [
    "MaskResizeWarning",
    "Tracked",
    "Tracker",
    "davis_palette",
    "overlay_masks",
    "read_mask",
    "track_video",
    "write_mask",
]
