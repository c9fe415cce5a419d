"""Image normalisation and resizing shared by tracking, evaluation, export and training.

Constants are ImageNet's; DINO's evaluation code uses std 0.228 for the red channel (a typo of 0.229 that its
published numbers depend on, see docs/PROTOCOL.md), so it is kept as a separate, named constant.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_STD = (0.228, 0.224, 0.225)  # facebookresearch/dino eval_video_segmentation.py


def target_size(height: int, width: int, short_side: int, patch_size: int, long_multiple: int | None = None):
    """(H, W) for a frame of ``height`` x ``width``: the short side becomes ``short_side`` (floored to a multiple of
    the patch size) and the long side keeps the aspect, floored to ``long_multiple`` (default: the patch size).

    DINO's ``read_frame`` keeps the short side at 480 and floors the long side to a multiple of 64, so
    854x480 becomes 832x480 (``long_multiple=64``); with the default, 854x480 at patch 8 becomes 848x480.
    """
    long_multiple = long_multiple or patch_size
    if short_side < patch_size:
        raise ValueError(f"short side {short_side} is smaller than the patch size {patch_size}")
    short = short_side // patch_size * patch_size
    long = max(height, width) * short_side / min(height, width)
    long = max(long_multiple, int(long // long_multiple * long_multiple))
    if long % patch_size:
        raise ValueError(f"long_multiple {long_multiple} is not a multiple of the patch size {patch_size}")
    return (short, long) if height <= width else (long, short)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    if not rgb.flags.writeable:  # torch warns on read-only arrays (views of decoder buffers)
        rgb = rgb.copy()
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalise a (..., 3, H, W) tensor in [0, 1] per channel: ``(x - mean) / std``, in the order and precision
    of the reference scripts (DINO's ``color_normalize``: subtract, then divide, in float32). ``mean`` / ``std``:
    3 numbers, or tensors of 3 values on ``x``'s device (built once by a caller that normalises many batches)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


def frames_to_batch(frames: list[np.ndarray], size: tuple[int, int] | None = None, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 frames -> (B, 3, h, w) float in [0, 1] on ``device``, resized bilinearly to ``size``
    without antialias (the protocols' ``cv2.resize(..., INTER_LINEAR)``).

    The frames travel to the device as uint8 (a quarter of the bytes of float) and are converted there.
    """
    x = torch.from_numpy(np.stack(frames)).to(device, non_blocking=True)  # (B, H, W, 3) uint8
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return x


def preprocess(frames: list[np.ndarray], size: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    """A list of (H, W, 3) uint8 frames -> an ImageNet-normalised (B, 3, h, w) batch at ``size``."""
    return normalize(frames_to_batch(frames, size, device), mean, std)
