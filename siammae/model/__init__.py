"""The network: config, named variants, the SiamMAE model (siamese ViT encoder + cross-self decoder), masking,
position embeddings and checkpoints.

Reads bottom-up: :mod:`config` -> :mod:`pos_embed`, :mod:`masking`, :mod:`blocks` (timm's ViT blocks, without
timm) -> :mod:`encoder`, :mod:`decoder` -> :mod:`siammae` (the model) -> :mod:`registry` (named variants) ->
:mod:`checkpoint` (save / load, foreign formats).
Weights by name: :mod:`statedict` (reading weight files) and :mod:`hub` (checked downloads, sha256 records) ->
:mod:`packaged` (the shipped ``siammae-cpu`` and its format) -> :mod:`named` (the official files, their published
hashes, the checks before a file enters the cache) ->
:mod:`weights` (names and paths to files, with their :mod:`provenance`) -> :mod:`checkpoint`.
"""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "load_model": "siammae.model.checkpoint",
    "save_checkpoint": "siammae.model.checkpoint",
    "ModelConfig": "siammae.model.config",
    "ViTEncoder": "siammae.model.encoder",
    "create_model": "siammae.model.registry",
    "list_models": "siammae.model.registry",
    "model_config": "siammae.model.registry",
    "register_model": "siammae.model.registry",
    "SiamMAE": "siammae.model.siammae",
    "patchify": "siammae.model.siammae",
    "unpatchify": "siammae.model.siammae",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
