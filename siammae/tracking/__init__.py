"""Tracking objects (masks) and keypoints through long videos by label propagation: streamed, constant memory,
with reports."""

from siammae.data.masks import MaskResizeWarning, read_mask, write_mask
from siammae.data.palette import davis_palette
from siammae.tracking.batch import BatchItem, read_manifest, run_batch, track_many
from siammae.tracking.overlay import draw_keypoints, overlay_masks
from siammae.tracking.pipeline import track_keypoints_video, track_video
from siammae.tracking.run import TrackingRun
from siammae.tracking.tracker import Tracked, Tracker

__all__ = [
    "BatchItem",
    "TrackingRun",
    "read_manifest",
    "run_batch",
    "track_many",
    "MaskResizeWarning",
    "Tracked",
    "Tracker",
    "davis_palette",
    "draw_keypoints",
    "overlay_masks",
    "read_mask",
    "track_keypoints_video",
    "track_video",
    "write_mask",
]
