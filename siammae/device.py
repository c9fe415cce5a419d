"""Devices and dtypes: the one place that turns "auto" / "cuda:1" / "bf16" into torch objects.

A leaf module (imports only torch), so that training, tracking, export and the CLI share one rule for "auto" and
one error for an fp16 request without a GPU.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# inference only: the linear layers quantised to int8, everything else in fp32 (siammae/model/quantize.py); CPU only
QUANTIZED = {"int8": torch.float32}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cuda" without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
    return device


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "fp32" | "fp16" | "bf16" | "int8" -> torch dtype for compute on ``device``; fp16 needs CUDA (CPU kernels for
    fp16 matrix products are slow or missing, and bf16 does the same job there); int8 (quantised linear layers,
    computed around them in fp32) needs the CPU."""
    if dtype in QUANTIZED:
        if torch.device(device).type != "cpu":
            raise ValueError(f"dtype {dtype} (quantised linear layers) runs on the CPU; on a GPU use fp16 or bf16")
        return QUANTIZED[dtype]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES) + tuple(QUANTIZED)}, got {dtype!r}")
    if dtype == "fp16" and torch.device(device).type != "cuda":
        raise ValueError("dtype fp16 needs a CUDA device (use fp32 or bf16 on the CPU)")
    return DTYPES[dtype]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision setting on ``device``, None for fp32. "auto": bf16 on a GPU that has
    it, else fp16 (with a loss scaler), fp32 on a CPU."""
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = resolve_dtype(precision, device)
    return None if dtype == torch.float32 else dtype
