"""TensorRT engines from the exported ONNX graph (optional extra ``trt``).

Works with TensorRT 10 and 11. The network is always strongly typed: TensorRT 11 has only strongly typed networks
(its precision builder flags are gone; the ``STRONGLY_TYPED`` creation flag is accepted and ignored), and on 10 the
flag makes it behave the same. The precision therefore comes from the graph: an fp16 graph
(``siammae-export --fp16``) gives an fp16 engine, with LayerNorm in fp32 as the
graph says. fp32 engines are built without TF32, so that they match the fp32 graph.

The engine has one optimisation profile, batch 1 .. ``max_batch`` (tuned for ``opt_batch``). A timing cache is kept
beside the engine (``<engine stem>.timing.cache``) so that a rebuild on the same GPU and TensorRT takes seconds. The
serialised engine is written atomically, with ``<engine>.json`` describing the build (source graph, its metadata,
TensorRT version, GPU).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from siammae.errors import InputError, SiamMAEError
from siammae.export.metadata import read_info
from siammae.export.runtime import require_tensorrt
from siammae.export.verify import verify_engine
from siammae.io import atomic_write, write_json

log = logging.getLogger(__name__)


def _network_flags(trt) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _timing_cache(trt, config, path: Path):
    """Attach the timing cache at ``path`` (a fresh one when absent or made by another GPU / TensorRT)."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            log.info(f"using the timing cache {path}")
        return
    log.info(f"timing cache {path} was made by another GPU or TensorRT version: starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    max_batch: int | None = None,
    opt_batch: int | None = None,
    workspace: float = 4.0,
    verify: bool = True,
) -> Path:
    """Build a TensorRT engine from an ONNX graph written by :func:`~siammae.export.onnx.export_onnx`.

    ``out`` defaults to the graph's path with suffix ``.engine``. The batch range is 1 .. ``max_batch`` (default:
    the graph's), tuned for ``opt_batch`` (default: ``max_batch``). ``workspace``: GB of scratch memory TensorRT
    may use for its tactics. With ``verify``, the engine and onnxruntime run the same random frames; figures go to
    ``<out>.verify.json``, an :class:`~siammae.export.onnx.ExportVerificationError` when outside
    :data:`ENGINE_TOLERANCE`.
    """
    trt = require_tensorrt("building a TensorRT engine")
    onnx_path = Path(onnx_path)
    info = read_info(onnx_path)
    if info.attention == "fused":
        raise InputError(
            f"{onnx_path.name} holds onnxruntime's fused attention (com.microsoft ops), which TensorRT cannot read: "
            "export it with attention='plain' (siammae-export --trt does)"
        )
    out = Path(out) if out is not None else onnx_path.with_suffix(".engine")
    max_batch = max_batch or info.max_batch
    opt_batch = opt_batch or max_batch
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"opt batch {opt_batch} must be in 1 .. max batch {max_batch}")
    if workspace <= 0:
        raise InputError(f"workspace must be positive (GB), got {workspace}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights are found beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace * (1 << 30)))
    if info.dtype == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    H, W = info.size
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (1, 3, H, W), (opt_batch, 3, H, W), (max_batch, 3, H, W))
    config.add_optimization_profile(profile)
    cache_path = out.with_suffix(".timing.cache")
    _timing_cache(trt, config, cache_path)

    gpu = torch.cuda.get_device_name()
    log.info(
        f"building a TensorRT {trt.__version__} {info.dtype} engine for {H}x{W} (height x width), "
        f"batch 1..{max_batch} on {gpu}"
    )
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SiamMAEError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    build_s = time.perf_counter() - t0
    with atomic_write(out) as tmp, open(tmp, "wb") as f:
        f.write(serialized)
    with atomic_write(cache_path) as tmp, open(tmp, "wb") as f:
        f.write(config.get_timing_cache().serialize())
    write_json(
        out.with_name(out.name + ".json"),
        {
            "engine": out.name,
            "onnx": onnx_path.name,
            "metadata": info.to_props(),
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "max_batch": max_batch,
            "opt_batch": opt_batch,
            "workspace_gb": workspace,
            "build_seconds": round(build_s, 1),
        },
    )
    log.info(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {build_s:.0f} s")
    if verify:
        verify_engine(out, onnx_path)
    return out
