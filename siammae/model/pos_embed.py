"""Position embeddings: MAE's fixed 2-D sin-cos table for any grid, and DINO's bicubic resize of a learned one.

The sin-cos table follows facebookresearch/mae ``util/pos_embed.py``: the first half of the channels encodes the
column (w) and the second half the row (h), each as [sin, cos] with frequencies 1 / 10000^(2i/d'); the [CLS] row is
zero. Because it is a function of the grid, it is computed exactly for any (h, w): no interpolation needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos (M,) -> (M, dim) as [sin(pos * omega), cos(pos * omega)], computed in float64 as MAE's numpy code."""
    if dim % 2:
        raise ValueError(f"sin-cos dimension must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, h: int, w: int, cls_token: bool = True) -> torch.Tensor:
    """(1 + h*w, dim) if ``cls_token`` else (h*w, dim), float32; row-major patch order (index = row * w + col)."""
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # (h*w,) row of each patch
    cols = torch.arange(w, dtype=torch.float64).repeat(h)  # (h*w,) column of each patch
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # MAE: emb_h (grid[0]=w) first
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize a learned (1, 1 + g*g, D) table to the grid (h, w): bicubic, no antialias, as DINO's
    ``interpolate_pos_encoding`` (including its +0.1 on the scale factor against floating-point floor errors).
    """
    n = table.shape[1] - 1
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"position table of {n} patches is not a square grid")
    if (h, w) == (g, g):
        return table
    cls, patch = table[:, :1], table[:, 1:]
    dim = table.shape[-1]
    patch = patch.reshape(1, g, g, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    patch = F.interpolate(
        patch.float(), scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False
    )
    assert patch.shape[-2:] == (h, w)
    patch = patch.to(table.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)  # (1, h*w, D)
    return torch.cat([cls, patch], dim=1)
