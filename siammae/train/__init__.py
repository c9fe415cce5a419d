"""Pretraining: ``train(TrainConfig(...))`` on folders of videos, one GPU or many (torchrun), resumable exactly."""

from siammae.train.config import TrainConfig
from siammae.train.loop import TrainingDivergedError, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "train"]
