"""Image normalisation and resizing shared by tracking, evaluation, export and training.

Constants are ImageNet's; DINO's evaluation code uses std 0.228 for the red channel (a typo of 0.229 that its
published numbers depend on, see docs/PROTOCOL.md), so it is kept as a separate, named constant. torch loads
inside the functions: the presets (``siammae.propagation.config``) read the constants, and ``--help`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_STD = (0.228, 0.224, 0.225)  # facebookresearch/dino eval_video_segmentation.py


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Normalise a (..., 3, H, W) tensor in [0, 1] per channel: ``(x - mean) / std``, in the order and precision
    of the reference scripts (DINO's ``color_normalize``: subtract, then divide, in float32). ``mean`` / ``std``:
    3 numbers, or tensors of 3 values on ``x``'s device (built once by a caller that normalises many batches)."""
    import torch

    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s
