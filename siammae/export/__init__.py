"""Deployment of the frame encoder: ONNX graphs and TensorRT engines, and runtimes that run them in the tracker.

``export_onnx`` writes the graph (input normalisation and position embeddings for the target grid inside,
metadata with everything a runtime needs); ``build_engine`` compiles it with TensorRT (extra ``trt``);
``load_encoder`` opens either as a :class:`~siammae.propagation.features.FrameEncoder`.
"""

from siammae._lazy import lazy_exports

_EXPORTS = {
    "ExportInfo": "siammae.export.metadata",
    "read_info": "siammae.export.metadata",
    "EncoderGraph": "siammae.export.onnx",
    "export_onnx": "siammae.export.onnx",
    "OnnxEncoder": "siammae.export.runtime",
    "TensorRTEncoder": "siammae.export.runtime",
    "load_encoder": "siammae.export.runtime",
    "build_engine": "siammae.export.tensorrt",
    "ExportVerificationError": "siammae.export.verify",
    "verify_engine": "siammae.export.verify",
    "verify_onnx": "siammae.export.verify",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
