"""Baselines that any trained encoder must beat: raw patch pixels as features.

:class:`PixelEncoder` is a :class:`~siammae.propagation.features.FrameEncoder` whose feature of a patch is its own
pixels: the frame normalised as the preset says (mean / std), cut into ``patch_size`` x ``patch_size`` patches, each
flattened to ``3 * patch_size**2`` values. Run through the same preset, driver and read-out as a model, it answers
"what does propagation get from colour alone, on the same grid". (The other baseline, copying the first mask to
every frame, needs no encoder: ``benchmarks/learning_curve.py`` scores it with the same metrics.)
"""

from __future__ import annotations

import torch

from siammae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize


class PixelEncoder:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H / p, W / p, 3 p^2): each patch's normalised pixels, channel-major
    (``c * p * p + y * p + x``), as a ViT's patch embedding sees them before its linear layer."""

    fixed_size = None
    dtype = torch.float32  # the FrameEncoder Protocol's declared fields
    path = None
    info = None

    def __init__(self, patch_size: int = 8, mean=IMAGENET_MEAN, std=IMAGENET_STD, device: str = "cpu"):
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = 3 * patch_size * patch_size
        self.device = torch.device(device)
        self._mean = torch.tensor(tuple(mean), device=self.device)
        self._std = torch.tensor(tuple(std), device=self.device)

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = normalize(frames.to(self.device).float(), self._mean, self._std)  # (B, 3, H, W)
        b, c, h, w = x.shape
        x = x[:, :, : h - h % p, : w - w % p]
        x = x.reshape(b, c, h // p, p, w // p, p)  # (B, 3, h, p, w, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // p, w // p, c * p * p)  # (B, h, w, 3 p^2)
