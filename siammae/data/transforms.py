"""Image normalisation and resizing shared by tracking, evaluation, export and training.

Constants are ImageNet's; DINO's evaluation code uses std 0.228 for the red channel (a typo of 0.229 that its
published numbers depend on, see docs/PROTOCOL.md), so it is kept as a separate, named constant. torch loads
inside the functions: the presets (``siammae.propagation.config``) read the constants, and ``--help`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_STD = (0.228, 0.224, 0.225)  # facebookresearch/dino eval_video_segmentation.py


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    import torch

    if not rgb.flags.writeable:  # torch warns on read-only arrays (views of decoder buffers)
        rgb = rgb.copy()
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalise a (..., 3, H, W) tensor in [0, 1] per channel: ``(x - mean) / std``, in the order and precision
    of the reference scripts (DINO's ``color_normalize``: subtract, then divide, in float32). ``mean`` / ``std``:
    3 numbers, or tensors of 3 values on ``x``'s device (built once by a caller that normalises many batches)."""
    import torch

    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


def frames_to_batch(frames: list[np.ndarray], size: tuple[int, int] | None = None, device="cpu") -> torch.Tensor:
    """(H, W, 3) uint8 frames -> (B, 3, h, w) float in [0, 1] on ``device``, resized bilinearly to ``size``
    without antialias (the protocols' ``cv2.resize(..., INTER_LINEAR)``).

    The frames travel to the device as uint8 (a quarter of the bytes of float) and are converted there.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.stack(frames)).to(device, non_blocking=True)  # (B, H, W, 3) uint8
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    return x


def preprocess(frames: list[np.ndarray], size: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    """A list of (H, W, 3) uint8 frames -> an ImageNet-normalised (B, 3, h, w) batch at ``size``."""
    return normalize(frames_to_batch(frames, size, device), mean, std)
