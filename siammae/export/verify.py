"""Checks that an exported encoder reproduces its source: onnxruntime against PyTorch, TensorRT against
onnxruntime, on the same random frames, with the figures written beside the file (``<file>.verify.json``)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from siammae.data.transforms import normalize
from siammae.errors import SiamMAEError
from siammae.export.metadata import ExportInfo, read_info
from siammae.export.runtime import OnnxEncoder, TensorRTEncoder, import_onnxruntime
from siammae.io import write_json

log = logging.getLogger(__name__)

# the fp32 graph must match PyTorch to 1e-4 (max abs, on the unit vectors the propagation compares); fp16 to a
# per-token cosine of 0.999
TOLERANCE = {"fp32": {"max_abs_err": 1e-4}, "fp16": {"min_cosine": 0.999}}
# engine vs onnxruntime on the same graph: fp32 kernels differ in summation order (and fused attention), so the
# bound is 10x the ONNX-vs-PyTorch one; fp16 is bounded by cosine as for ONNX
ENGINE_TOLERANCE = {"fp32": {"max_abs_err": 1e-3}, "fp16": {"min_cosine": 0.999}}


class ExportVerificationError(SiamMAEError):
    """The exported graph does not reproduce the PyTorch model within the tolerance."""


def reference_features(model, frames: torch.Tensor, mean, std, pos_interp: str = "auto") -> torch.Tensor:
    """The PyTorch features an exported graph must reproduce: (B, 3, H, W) in [0, 1] -> (B, h*w, D), fp32."""
    x = normalize(frames.to(next(model.parameters()).device, torch.float32), mean, std)
    with torch.inference_mode():
        feats = model.features(x, pos_interp=pos_interp).float().cpu()  # (B, h, w, D)
    return feats.flatten(1, 2)  # (B, h*w, D)


def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Error figures of features ``out`` against ``ref``, both (B, N, D): max abs error, per-token cosine, on the
    L2-normalised features (the directions label propagation compares; its engine normalises)."""
    out, ref = F.normalize(out.float().cpu(), dim=-1), F.normalize(ref.float().cpu(), dim=-1)
    cos = F.cosine_similarity(out, ref, dim=-1)  # (B, N)
    return {
        "max_abs_err": float((out - ref).abs().max()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
    }


def format_figures(f: dict) -> str:
    return f"max abs error {f['max_abs_err']:.2e}, min cosine {f['min_cosine']:.6f}, mean cosine {f['mean_cosine']:.6f}"


def within(figures: dict, tol: dict) -> bool:
    """Whether ``figures`` (from :func:`compare`) meet a tolerance such as ``TOLERANCE["fp32"]``."""
    ok = figures["max_abs_err"] <= tol.get("max_abs_err", math.inf)
    return ok and figures["min_cosine"] >= tol.get("min_cosine", -math.inf)


def verify_onnx(
    path: str | os.PathLike,
    model,
    info: ExportInfo | None = None,
    batch_sizes: tuple[int, ...] = (1, 2),
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Run the exported graph with onnxruntime (CUDA provider where present, else CPU) and ``model`` in fp32
    PyTorch on the same random frames; write the figures to ``<path>.verify.json`` and return them.

    Raises :class:`ExportVerificationError` when the graph is outside :data:`TOLERANCE` for its dtype.
    """
    path = Path(path)
    info = info or read_info(path)
    runtime = OnnxEncoder(path, device=device)
    g = torch.Generator().manual_seed(seed)
    batch_sizes = tuple(sorted({min(b, info.max_batch) for b in batch_sizes}))
    outs, refs = [], []
    for b in batch_sizes:
        frames = torch.rand(b, 3, info.height, info.width, generator=g)
        outs.append(runtime(frames).flatten(1, 2).cpu())  # (b, h*w, D)
        refs.append(reference_features(model, frames, info.mean, info.std, info.pos_interp))
    figures = compare(torch.cat(outs), torch.cat(refs))
    onnxruntime = import_onnxruntime()

    report = {
        "model": path.name,
        "dtype": info.dtype,
        **figures,
        "tolerance": TOLERANCE[info.dtype],
        "passed": within(figures, TOLERANCE[info.dtype]),
        "reference": "PyTorch fp32",
        "providers": runtime.providers,
        "batch_sizes": list(batch_sizes),
        "input_shape": ["B", 3, info.height, info.width],
        "output_shape": ["B", info.grid[0] * info.grid[1], info.embed_dim],
        "exporter": info.exporter,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    report_path = path.with_name(path.name + ".verify.json")
    write_json(report_path, report)
    log.info(
        f"verify ({', '.join(runtime.providers)}, batches {list(batch_sizes)}): {format_figures(figures)} -> "
        + ("ok" if report["passed"] else "FAILED")
    )
    if not report["passed"]:
        raise ExportVerificationError(
            f"{path}: onnxruntime output differs from PyTorch beyond {TOLERANCE[info.dtype]} "
            f"(max abs error {figures['max_abs_err']:.2e}, min cosine {figures['min_cosine']:.6f}); "
            f"details in {report_path.name}"
        )
    return report


def verify_engine(engine_path: str | os.PathLike, onnx_path: str | os.PathLike, seed: int = 0) -> dict:
    """Run the engine and onnxruntime on the same random frames (batch 1 and the engine's max batch); write the
    figures to ``<engine>.verify.json``; raise :class:`ExportVerificationError` outside :data:`ENGINE_TOLERANCE`."""
    engine_path = Path(engine_path)
    engine = TensorRTEncoder(engine_path)
    graph = OnnxEncoder(onnx_path)
    info = graph.info
    g = torch.Generator().manual_seed(seed)
    batch_sizes = sorted({1, engine.max_batch})
    outs, refs = [], []
    for b in batch_sizes:
        frames = torch.rand(b, 3, *info.size, generator=g)
        outs.append(engine(frames).flatten(1, 2).cpu())  # (b, h*w, D)
        refs.append(graph(frames).flatten(1, 2).cpu())
    figures = compare(torch.cat(outs), torch.cat(refs))
    tol = ENGINE_TOLERANCE[info.dtype]
    passed = within(figures, tol)
    report = {
        "engine": engine_path.name,
        "reference": f"onnxruntime on {Path(onnx_path).name} ({', '.join(graph.providers)})",
        "dtype": info.dtype,
        **figures,
        "tolerance": tol,
        "passed": passed,
        "batch_sizes": batch_sizes,
    }
    report_path = engine_path.with_name(engine_path.name + ".verify.json")
    write_json(report_path, report)
    log.info(f"verify engine (batches {batch_sizes}): {format_figures(figures)} -> " + ("ok" if passed else "FAILED"))
    if not passed:
        raise ExportVerificationError(
            f"{engine_path}: TensorRT output differs from onnxruntime beyond {tol} "
            f"(max abs error {figures['max_abs_err']:.2e}, min cosine {figures['min_cosine']:.6f}); "
            f"details in {report_path.name}"
        )
    return report
