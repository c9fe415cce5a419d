"""siammae: Siamese Masked Autoencoders for pretraining, tracking, evaluation and deployment."""

from siammae.attention import attention_maps, render_attention
from siammae.checkpoint import load_model, save_checkpoint
from siammae.config import ModelConfig
from siammae.data.synthetic import iter_synthetic_clip, make_synthetic_clip
from siammae.encoder import ViTEncoder
from siammae.errors import CheckpointError, InputError, SiamMAEError, VideoError
from siammae.evaluation.benchmark import evaluate
from siammae.export import build_engine, export_onnx, load_encoder
from siammae.model import SiamMAE
from siammae.models import create_model, list_models, register_model
from siammae.propagation import PRESETS, PropagationConfig, Propagator, get_preset, propagate_labels
from siammae.tracking import Tracker, davis_palette, read_mask, track_keypoints_video, track_video, write_mask
from siammae.train import TrainConfig, TrainingDivergedError, TrainResult  # the loop: siammae.train.train

__version__ = "0.1.0"

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "track_keypoints_video",
    "build_engine",
    "export_onnx",
    "load_encoder",
    "Tracker",
    "davis_palette",
    "read_mask",
    "track_video",
    "write_mask",
    "evaluate",
    "iter_synthetic_clip",
    "make_synthetic_clip",
    "PRESETS",
    "PropagationConfig",
    "Propagator",
    "get_preset",
    "propagate_labels",
    "attention_maps",
    "render_attention",
    "CheckpointError",
    "InputError",
    "ModelConfig",
    "SiamMAE",
    "SiamMAEError",
    "VideoError",
    "ViTEncoder",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
    "save_checkpoint",
]
