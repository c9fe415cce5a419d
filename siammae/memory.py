"""How much memory a run will need, against what the machine has: checked before anything is allocated.

One estimator for every command that runs a ViT over frames (tracking, attention maps, evaluation, export,
training): a size typo (``--size 100000``) or an absurd frame (5000x16 pixels, which a 480 short side makes
480x150000) is a one-line error instead of minutes of swapping and an OOM kill. The estimate is deliberately
coarse (an upper bound of the few largest tensors, not a profile): it separates "fits" from "cannot possibly fit",
and :data:`HEADROOM` keeps it from refusing runs that the estimate overstates.
"""

from __future__ import annotations

import os

import torch

from siammae.errors import InputError

HEADROOM = 1.0  # refuse only when the estimate exceeds what is available (it already over-counts)


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


def check_encoder_fits(encoder, height: int, width: int, batch: int, device, what: str, dtype_bytes: int = 4) -> None:
    """:func:`check_fits` for ``batch`` frames of ``height`` x ``width`` through ``encoder``: a SiamMAE, a
    ViTEncoder, a TorchEncoder (``.model``) or an exported runtime (``patch_size`` / ``embed_dim`` only)."""
    model = getattr(encoder, "model", encoder)
    cfg = getattr(model, "config", None)
    patch = getattr(cfg, "patch_size", None) or getattr(encoder, "patch_size", 16)
    dim = getattr(cfg, "embed_dim", None) or getattr(encoder, "embed_dim", None) or 384
    heads = getattr(cfg, "num_heads", None) or max(1, dim // 64)
    need = vit_bytes(
        height, width, patch_size=patch, embed_dim=dim, num_heads=heads, batch=batch, dtype_bytes=dtype_bytes
    )
    check_fits(need, f"{what} ({batch} frames of {width}x{height} pixels per batch)", device, "use a smaller size")


def check_pair_fits(cfg, device) -> None:
    """Training: stop before the model exists when not even one pair of frames of ``cfg`` (a ModelConfig) fits (a
    typo in --input-size). A floor, not a forecast of the whole batch, so a run that fits is never refused."""
    need = vit_bytes(
        cfg.img_size, cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, batch=2
    )
    check_fits(need, f"--input-size {cfg.img_size} (one pair of frames)", device, "use a smaller --input-size")
