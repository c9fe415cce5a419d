"""Patch masking as MAE does it, per frame: random (argsort of noise) and grid (the paper's ablation).

All functions return ``ids_keep (B, K)`` (indices of the kept patches), ``mask (B, L)`` (0 is keep, 1 is remove,
in the original patch order) and ``ids_restore (B, L)`` (the permutation that puts [kept, removed] back in order).
MAE keeps ``int(L * (1 - ratio))`` patches: 9 of 196 at /16 and 39 of 784 at /8 for ratio 0.95.
"""

from __future__ import annotations

import torch


def num_kept(num_patches: int, ratio: float) -> int:
    """Patches MAE keeps at ``ratio`` (at least one)."""
    return max(1, int(num_patches * (1 - ratio)))


def _from_shuffle(ids_shuffle: torch.Tensor, len_keep: int):
    batch, length = ids_shuffle.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(batch, length, device=ids_shuffle.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)  # back to the original patch order
    return ids_keep, mask, ids_restore


def random_masking(batch: int, length: int, ratio: float, device=None, generator: torch.Generator | None = None):
    """MAE's per-sample random masking: keep the ``int(L * (1 - ratio))`` patches with the smallest noise."""
    noise = torch.rand(batch, length, device=device, generator=generator)  # (B, L) in [0, 1]
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep
    return _from_shuffle(ids_shuffle, num_kept(length, ratio))


def grid_masking(batch: int, h: int, w: int, ratio: float, device=None):
    """A regular lattice of kept patches: ratio 0.5 keeps a checkerboard, 0.75 one patch of every 2x2 block."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    if abs(ratio - 0.5) < 1e-9:
        keep = (rows + cols) % 2 == 0
    elif abs(ratio - 0.75) < 1e-9:
        keep = (rows % 2 == 0) & (cols % 2 == 0)
    else:
        raise ValueError(f"grid masking supports ratios 0.5 and 0.75, got {ratio}")
    order = torch.cat([keep.nonzero().flatten(), (~keep).nonzero().flatten()])  # kept first, in raster order
    ids_shuffle = order.unsqueeze(0).expand(batch, -1)
    return _from_shuffle(ids_shuffle, int(keep.sum()))


def make_mask(kind: str, batch: int, h: int, w: int, ratio: float, device=None, generator=None):
    """Dispatch on ``kind`` ("random" | "grid")."""
    if kind == "random":
        return random_masking(batch, h * w, ratio, device=device, generator=generator)
    if kind == "grid":
        return grid_masking(batch, h, w, ratio, device=device)
    raise ValueError(f"masking must be 'random' or 'grid', got {kind!r}")
