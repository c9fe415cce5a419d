"""Deployment of the frame encoder: ONNX graphs and TensorRT engines, and runtimes that run them in the tracker.

``export_onnx`` writes the graph (normalisation, position embeddings for the target grid and L2 normalisation
inside, metadata with everything a runtime needs); ``build_engine`` compiles it with TensorRT (extra ``trt``);
``load_encoder`` opens either as a :class:`~siammae.frame_encoder.FrameEncoder`.
"""

from siammae.export.onnx import (
    EncoderGraph,
    ExportInfo,
    ExportVerificationError,
    export_onnx,
    read_info,
    verify_onnx,
)
from siammae.export.runtime import OnnxEncoder, TensorRTEncoder, load_encoder
from siammae.export.tensorrt import build_engine, verify_engine

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
