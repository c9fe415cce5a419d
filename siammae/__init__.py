"""siammae: Siamese Masked Autoencoders for pretraining, tracking, evaluation and deployment.

The public names below are imported lazily (PEP 562): ``import siammae`` costs almost nothing, and a command's
``--help`` never pulls in training, evaluation or the export runtimes it does not use.
"""

from __future__ import annotations

from siammae._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "attention_maps": "siammae.attention.maps",
    "render_attention": "siammae.attention.maps",
    "load_model": "siammae.model.checkpoint",
    "save_checkpoint": "siammae.model.checkpoint",
    "ModelConfig": "siammae.model.config",
    "ViTEncoder": "siammae.model.encoder",
    "SiamMAE": "siammae.model.siammae",
    "create_model": "siammae.model.registry",
    "list_models": "siammae.model.registry",
    "register_model": "siammae.model.registry",
    "DEFAULT_WEIGHTS": "siammae.model.weights",
    "list_weights": "siammae.model.weights",
    "resolve_weights": "siammae.model.weights",
    "iter_synthetic_clip": "siammae.data.synthetic",
    "make_synthetic_clip": "siammae.data.synthetic",
    "CheckpointError": "siammae.errors",
    "InputError": "siammae.errors",
    "SiamMAEError": "siammae.errors",
    "VideoError": "siammae.errors",
    "evaluate": "siammae.evaluation.benchmark",
    "build_engine": "siammae.export.tensorrt",
    "export_onnx": "siammae.export.onnx",
    "load_encoder": "siammae.export.runtime",
    "Preset": "siammae.propagation.config",
    "PropagationConfig": "siammae.propagation.config",
    "get_preset": "siammae.propagation.config",
    "preset_names": "siammae.propagation.config",
    "InputConfig": "siammae.propagation.inputs",
    # the three ways to track (ARCHITECTURE.md): the library call, a run into files, the command line as a job
    "Tracker": "siammae.propagation.driver",
    "track_video": "siammae.tracking.track",
    "TrackJob": "siammae.tracking.job",
    "RunReport": "siammae.tracking.report",
    "load_tracker": "siammae.tracking.job",
    "LiveSource": "siammae.data.live",
    "open_source": "siammae.data.live",
    "davis_palette": "siammae.data.palette",
    "read_mask": "siammae.data.masks",
    "write_mask": "siammae.data.masks",
    "TrainConfig": "siammae.train.config",
    "TrainingDivergedError": "siammae.train.loop",
    "TrainResult": "siammae.train.loop",
    "PrepareSettings": "siammae.train.prepare",
    "prepare": "siammae.train.prepare",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
