"""The one place that chooses between a Triton kernel and its PyTorch reference.

``backend="auto"`` picks Triton for CUDA tensors when Triton imports, PyTorch otherwise. ``"triton"`` forces the
kernel (on CPU tensors it only works under ``TRITON_INTERPRET=1``, which is how the tests run it); ``"torch"``
forces the reference. The environment variable ``SIAMMAE_KERNEL_BACKEND`` (auto | triton | torch) overrides the
``"auto"`` choice for every op, like timm's ``TIMM_FUSED_ATTN``.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")
BACKEND_ENV = "SIAMMAE_KERNEL_BACKEND"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (Linux wheels only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op whose tensors live on ``device``.

    Raises ``ValueError`` for an unknown name, and for ``"triton"`` where Triton cannot run the tensors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend 'triton' requested but triton is not installed (Linux only)")
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError(
                f"backend 'triton' needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run "
                "the kernel on the CPU through the interpreter"
            )
    return backend
