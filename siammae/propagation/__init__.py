"""k-nearest-neighbour label propagation (DINO and CRW protocols): configs, label conversions, the engine."""

from siammae.propagation.config import PRESETS, PropagationConfig, get_preset
from siammae.propagation.engine import PropagationState, Propagator, propagate_labels
from siammae.propagation.labels import labels_to_mask, mask_to_labels, norm_mask, one_hot, resize_nearest

__all__ = [
    "PRESETS",
    "PropagationConfig",
    "PropagationState",
    "Propagator",
    "get_preset",
    "labels_to_mask",
    "mask_to_labels",
    "norm_mask",
    "one_hot",
    "propagate_labels",
    "resize_nearest",
]
