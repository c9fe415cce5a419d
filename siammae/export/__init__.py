"""Deployment of the frame encoder: ONNX graphs and TensorRT engines, and runtimes that run them in the tracker.

``export_onnx`` writes the graph (normalisation, position embeddings for the target grid and L2 normalisation
inside, metadata with everything a runtime needs); ``build_engine`` compiles it with TensorRT (extra ``trt``);
``load_encoder`` opens either as a :class:`~siammae.propagation.features.FrameEncoder`.
"""

from siammae.export.metadata import ExportInfo, read_info
from siammae.export.onnx import EncoderGraph, export_onnx
from siammae.export.runtime import OnnxEncoder, TensorRTEncoder, load_encoder
from siammae.export.tensorrt import build_engine
from siammae.export.verify import ExportVerificationError, verify_engine, verify_onnx

__all__ = [
    "EncoderGraph",
    "ExportInfo",
    "ExportVerificationError",
    "OnnxEncoder",
    "TensorRTEncoder",
    "build_engine",
    "export_onnx",
    "load_encoder",
    "read_info",
    "verify_engine",
    "verify_onnx",
]
