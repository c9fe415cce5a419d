"""Pretraining: ``train(TrainConfig(...))`` on folders of videos, one GPU or many (torchrun), resumable exactly."""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "siammae.train.config",
    "TrainingDivergedError": "siammae.train.loop",
    "TrainResult": "siammae.train.loop",
    "train": "siammae.train.loop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
