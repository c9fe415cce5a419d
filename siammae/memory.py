"""How much memory a run will need, against what the machine has: checked before anything is allocated.

One estimator for every command that runs a ViT over frames (tracking, attention maps, evaluation, export,
training): a size typo (``--size 100000``) or an absurd frame (5000x16 pixels, which a 480 short side makes
480x150000) is a one-line error instead of minutes of swapping and an OOM kill. The estimate is deliberately
coarse (an upper bound of the few largest tensors, not a profile): it separates "fits" from "cannot possibly fit",
and :data:`HEADROOM` keeps it from refusing runs that the estimate overstates.

Memory is not the only bound: a frame that fits can still take hours (``--size 4000x4000``; a 5000x16 video at
``--size 128`` is 128x40000 pixels, 20,000 tokens a frame, whose attention and propagation grow with their square).
:func:`frame_flops` counts the work of one frame (the ViT's matrix products and attention, the propagation's
affinities to its context frames) and :func:`check_work` refuses a run whose frames would each take longer than
:data:`MAX_FRAME_SECONDS` even at an optimistic rate (:data:`CPU_FLOPS_PER_CORE` per core, :data:`GPU_FLOPS`), so
the true time is longer still. ``SIAMMAE_MAX_FRAME_SECONDS`` raises the bound for a run that means it.
"""

from __future__ import annotations

import os

import torch

from siammae.errors import InputError

HEADROOM = 1.0  # refuse only when the estimate exceeds what is available (it already over-counts)
# The work bound: seconds per frame at rates above what the pipeline reaches (fp32 FMA on one modern core, ~1e11
# FLOP/s; a data-centre GPU's sustained rate, ~1e14), so the estimate is a floor of the real time. For scale, the
# default preset at 480p (vits16) is about 1.6e11 FLOP per frame and ran at 0.36 frames/s on a 2-core CPU here.
MAX_FRAME_SECONDS = 60.0
MAX_FRAME_SECONDS_ENV = "SIAMMAE_MAX_FRAME_SECONDS"
CPU_FLOPS_PER_CORE = 1e11
GPU_FLOPS = 1e14


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for this process on ``device``: ``MemAvailable`` of /proc/meminfo on the host, free CUDA memory
    on a GPU; None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def vit_bytes(
    height: int,
    width: int,
    *,
    patch_size: int,
    embed_dim: int,
    num_heads: int = 1,  # kept for callers; the fused attention's memory does not grow with it
    batch: int = 1,
    dtype_bytes: int = 4,
    mlp_ratio: float = 4.0,
    training: bool = False,
    depth: int = 1,
) -> int:
    """Peak bytes of one ViT forward over ``batch`` frames of ``height`` x ``width`` pixels (at least).

    Counted: the input frames (float32), the tokens and the widest activation of a block (q, k, v and the MLP's
    hidden layer), and for ``training`` the activations of every block kept for the backward pass. Not counted:
    the attention matrix, which ``F.scaled_dot_product_attention`` never forms whole (flash / memory-efficient
    kernels), so that the estimate stays a floor that a run which fits never exceeds.
    """
    tokens = (height // max(patch_size, 1)) * (width // max(patch_size, 1)) + 1
    frames = batch * 3 * height * width * 4
    x = batch * tokens * embed_dim * dtype_bytes
    widest = batch * tokens * int(embed_dim * mlp_ratio) * dtype_bytes
    per_block = 4 * x + widest
    return frames + (depth if training else 1) * per_block + x


def frame_flops(
    height: int,
    width: int,
    *,
    patch_size: int,
    embed_dim: int,
    depth: int = 12,
    mlp_ratio: float = 4.0,
    context_frames: int = 0,
) -> float:
    """Floating-point operations to encode one ``height`` x ``width`` frame and, with ``context_frames``, to
    propagate labels to it from that many frames (at least).

    Per ViT block on N tokens of width D: the q, k, v and output projections and the MLP, N * D^2 * (8 + 4 *
    mlp_ratio) (a multiply-add counted as 2), and attention, 4 * N^2 * D (Q K^T and the weighted sum of V). The
    propagation compares every patch with every patch of each context frame: 2 * N^2 * D per context frame."""
    n = (height // max(patch_size, 1)) * (width // max(patch_size, 1)) + 1
    d = embed_dim
    block = n * d * d * (8 + 4 * mlp_ratio) + 4 * n * n * d
    return depth * block + 2 * n * n * d * context_frames


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_frame_seconds() -> float:
    """:data:`MAX_FRAME_SECONDS`, or ``SIAMMAE_MAX_FRAME_SECONDS`` when set (a number > 0)."""
    raw = os.environ.get(MAX_FRAME_SECONDS_ENV, "").strip()
    if not raw:
        return MAX_FRAME_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:  # nan too
        raise InputError(f"{MAX_FRAME_SECONDS_ENV}={raw!r}; valid: a number of seconds > 0")
    return value


def check_work(flops: float, what: str, device: torch.device | str = "cpu", hint: str = "") -> None:
    """An InputError when one frame of ``flops`` would take longer than :func:`max_frame_seconds` on ``device``
    even at the optimistic rate of the module docstring; ``what`` names the run."""
    device = torch.device(device)
    rate = GPU_FLOPS if device.type == "cuda" else CPU_FLOPS_PER_CORE * _cores()
    seconds, limit = flops / rate, max_frame_seconds()
    if seconds > limit:
        where = "a GPU" if device.type == "cuda" else f"{_cores()} CPU core(s)"
        raise InputError(
            f"{what} is about {flops:.1e} operations per frame: at least {seconds:,.0f} s a frame on {where} (the "
            f"bound is {limit:g} s; {MAX_FRAME_SECONDS_ENV} raises it)" + (f"; {hint}" if hint else "")
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def check_fits(need: int, what: str, device: torch.device | str = "cpu", hint: str = "") -> None:
    """An InputError when ``need`` bytes exceed the memory available on ``device`` (and the host, for a GPU run:
    the frames are decoded there); ``what`` says what needs it (``"--size 100000 (frames 100000x177777)"``)."""
    device = torch.device(device)
    places = [device] if device.type == "cpu" else [device, torch.device("cpu")]
    for place in places:
        have = available_bytes(place)
        if have is not None and need > HEADROOM * have:
            where = "GPU memory" if place.type == "cuda" else "memory"
            raise InputError(
                f"{what} needs about {format_bytes(need)} but {format_bytes(have)} of {where} is available"
                + (f"; {hint}" if hint else "")
            )


def check_encoder_fits(
    encoder,
    height: int,
    width: int,
    batch: int,
    device,
    what: str,
    dtype_bytes: int = 4,
    context_frames: int | None = None,
) -> None:
    """:func:`check_fits` for ``batch`` frames of ``height`` x ``width`` through ``encoder``: a SiamMAE, a
    ViTEncoder, a TorchEncoder (``.model``) or an exported runtime (``patch_size`` / ``embed_dim`` only). With
    ``context_frames`` (a tracking run: frames each frame's labels come from), :func:`check_work` too."""
    model = getattr(encoder, "model", encoder)
    cfg = getattr(model, "config", None)
    patch = getattr(cfg, "patch_size", None) or getattr(encoder, "patch_size", 16)
    dim = getattr(cfg, "embed_dim", None) or getattr(encoder, "embed_dim", None) or 384
    heads = getattr(cfg, "num_heads", None) or max(1, dim // 64)
    need = vit_bytes(
        height, width, patch_size=patch, embed_dim=dim, num_heads=heads, batch=batch, dtype_bytes=dtype_bytes
    )
    check_fits(need, f"{what} ({batch} frames of {width}x{height} pixels per batch)", device, "use a smaller size")
    if context_frames is not None:
        depth = getattr(cfg, "depth", None) or getattr(encoder, "depth", None) or 12
        mlp = getattr(cfg, "mlp_ratio", None) or 4.0
        flops = frame_flops(
            height, width, patch_size=patch, embed_dim=dim, depth=depth, mlp_ratio=mlp, context_frames=context_frames
        )
        check_work(flops, what, device, "use a smaller --size (the default preset's 480 short side, or 240)")


def check_pair_fits(cfg, device) -> None:
    """Training: stop before the model exists when not even one pair of frames of ``cfg`` (a ModelConfig) fits (a
    typo in --input-size). A floor, not a forecast of the whole batch, so a run that fits is never refused."""
    need = vit_bytes(
        cfg.img_size, cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, batch=2
    )
    check_fits(need, f"--input-size {cfg.img_size} (one pair of frames)", device, "use a smaller --input-size")
