"""The CPU allocator setting that keeps a CPU run's activations out of the page-fault path.

Torch-free (stdlib only), so that a command can apply it at its entry, before its checks and before torch loads.
It changes malloc for the whole process, so the library never calls it (see :func:`tune_cpu_allocator`).
"""

from __future__ import annotations

import os

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
