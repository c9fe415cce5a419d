"""The network: config, named variants, the SiamMAE model (siamese ViT encoder + cross-self decoder), masking,
position embeddings and checkpoints.

Reads bottom-up: :mod:`config` -> :mod:`pos_embed`, :mod:`masking` -> :mod:`encoder`, :mod:`decoder` ->
:mod:`siammae` (the model) -> :mod:`registry` (named variants) -> :mod:`checkpoint` (save / load, foreign formats).
"""

from siammae.model.checkpoint import load_model, save_checkpoint
from siammae.model.config import ModelConfig
from siammae.model.encoder import ViTEncoder
from siammae.model.registry import create_model, list_models, model_config, register_model
from siammae.model.siammae import SiamMAE, patchify, unpatchify

__all__ = [
    "ModelConfig",
    "SiamMAE",
    "ViTEncoder",
    "create_model",
    "list_models",
    "load_model",
    "model_config",
    "patchify",
    "register_model",
    "save_checkpoint",
    "unpatchify",
]
