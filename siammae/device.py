"""Devices and dtypes: the one place that turns "auto" / "cuda:1" / "bf16" into torch objects.

A leaf module (imports only torch), so that training, tracking, export and the CLI share one rule for "auto" and
one error for an fp16 request without a GPU.
"""

from __future__ import annotations

import os

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cuda" without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available (use --device cpu or auto)")
    return device


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "fp32" | "fp16" | "bf16" -> torch dtype for compute on ``device``; fp16 needs CUDA (CPU kernels for fp16
    matrix products are slow or missing, and bf16 does the same job there)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_CPU_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep glibc's malloc from handing a CPU run's activations back to the kernel after every layer.

    By default glibc serves blocks above a threshold that starts at 128 KiB with ``mmap`` and returns freed memory at
    the top of the heap above 128 KiB, so a ViT on a CPU page-faults its activations in anew on every pass (for
    ViT-S/16 at 480x832, 20 000 faults a frame; with 8 frames a pass, 380 000 faults and as much system time as
    compute). This sets the mmap threshold to glibc's largest (32 MiB) and the trim threshold to 256 MiB: blocks up
    to 32 MiB are reused from the heap, and at most 256 MiB of free heap is kept. Returns whether it was applied.

    Not applied (False): a libc other than glibc, ``SIAMMAE_NO_MALLOC_TUNING=1``, or when the environment already
    chooses (``MALLOC_*`` glibc tunables, ``GLIBC_TUNABLES``, an allocator in ``LD_PRELOAD`` such as jemalloc or
    tcmalloc). Idempotent.

    It changes malloc for the whole process, so the library never calls it: the commands that encode frames
    (``siammae-track``, ``siammae-eval``, ``siammae-attn``, ``siammae-demo``) call it once at their entry; a Python
    program that encodes on a CPU may call it itself.
    """
    global _CPU_ALLOCATOR_TUNED
    if _CPU_ALLOCATOR_TUNED:
        return True
    if os.environ.get("SIAMMAE_NO_MALLOC_TUNING", "") not in ("", "0"):
        return False
    if os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl and macOS have no such symbol)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20) == 1
    except (OSError, AttributeError):
        return False
    _CPU_ALLOCATOR_TUNED = ok
    return ok
