"""k-nearest-neighbour label propagation (DINO and CRW protocols): presets, label conversions, the engine."""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "InputConfig": "siammae.propagation.inputs",
    "Preset": "siammae.propagation.config",
    "PropagationConfig": "siammae.propagation.config",
    "default_preset": "siammae.propagation.config",
    "get_preset": "siammae.propagation.config",
    "parse_size": "siammae.propagation.inputs",
    "preset_names": "siammae.propagation.config",
    "register_preset": "siammae.propagation.config",
    "PropagationState": "siammae.propagation.engine",
    "Propagator": "siammae.propagation.engine",
    "propagate_labels": "siammae.propagation.engine",
    "labels_to_mask": "siammae.propagation.labels",
    "mask_to_labels": "siammae.propagation.labels",
    "norm_mask": "siammae.propagation.labels",
    "one_hot": "siammae.propagation.labels",
    "resize_nearest": "siammae.propagation.labels",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
