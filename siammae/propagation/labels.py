"""Between object-id masks at image resolution and soft label maps at patch resolution.

Going down (``mask_to_labels``) follows DINO's ``read_seg``: a nearest-neighbour resize with PIL's rule, then
a one-hot over the ids. Coming back up (``labels_to_mask``) follows either protocol's output rule
(docs/PROTOCOL.md, "read-out" row): DINO upsamples bilinearly by the patch size, min-max normalises
each class (``norm_mask``), takes the argmax and resizes by nearest neighbour to the original size; CRW
resizes bilinearly to the image size and takes the argmax. Ids are channel indices throughout, so id 7 stays 7
even when ids 2..6 are absent.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from siammae.errors import InputError
from siammae.propagation.config import PropagationConfig


@functools.lru_cache(maxsize=64)
def _pil_nearest_index(n_in: int, n_out: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Source index of each output pixel of a PIL NEAREST resize along one axis, bit for bit.

    Pillow (``_imaging.c`` ``_resize`` -> ``Geometry.c`` ``ImagingScaleAffine``) samples at pixel centres
    with a running double: ``x = scale / 2``, then ``x += scale`` per pixel, the index being ``int(x)``. The
    running sum (not ``(i + 0.5) * scale``) decides the pixels that fall on an exact boundary (2 -> 7 pixels
    has one), so it is replayed here.
    """
    scale = n_in / n_out
    pos = scale * 0.5
    index = []
    for _ in range(n_out):
        index.append(int(pos))
        pos += scale
    return torch.tensor(index, dtype=torch.int64, device=device)  # cached per device: no copy per frame


def resize_nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an (H, W) map to ``size`` (h, w) by nearest neighbour like PIL's ``resize((w, h), NEAREST)``."""
    H, W = ids.shape
    h, w = size
    rows = _pil_nearest_index(H, h, ids.device)
    cols = _pil_nearest_index(W, w, ids.device)
    return ids[rows[:, None], cols[None, :]]


def _as_id_map(id_map, what: str) -> torch.Tensor:
    """An (H, W) integer numpy array or tensor as an int64 tensor, with a one-line error otherwise."""
    if isinstance(id_map, np.ndarray):
        id_map = torch.from_numpy(np.array(id_map, copy=not id_map.flags.writeable, order="C"))
    if not isinstance(id_map, torch.Tensor) or id_map.dim() != 2:
        raise InputError(f"{what} must be an (H, W) id map, got {getattr(id_map, 'shape', type(id_map))}")
    if id_map.dtype.is_floating_point or id_map.dtype.is_complex or id_map.dtype == torch.bool:
        raise InputError(f"{what} must hold integer object ids, got dtype {id_map.dtype}")
    id_map = id_map.long()
    if id_map.numel() and int(id_map.min()) < 0:
        raise InputError(f"{what} holds negative ids (min {int(id_map.min())}); ids must be >= 0, 0 = background")
    return id_map


def mask_to_labels(id_map, grid: tuple[int, int]) -> torch.Tensor:
    """Downsample an (H, W) id map to the (h, w) patch grid by nearest neighbour (DINO ``read_seg``).

    Equal to ``np.array(PIL.Image.fromarray(id_map).resize((w, h), PIL.Image.NEAREST))``, for any integer ids.
    Returns an (h, w) int64 tensor.
    """
    return resize_nearest(_as_id_map(id_map, "mask"), grid)


def one_hot(ids: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """(h, w) integer ids -> (C, h, w) float32 one-hot; C = ``num_classes`` or 1 + the largest id (DINO)."""
    ids = _as_id_map(ids, "labels")
    if num_classes is None:
        num_classes = int(ids.max()) + 1
    return F.one_hot(ids, num_classes).permute(2, 0, 1).float()  # (h, w, C) -> (C, h, w)


def norm_mask(soft: torch.Tensor) -> torch.Tensor:
    """DINO ``norm_mask``: min-max normalise each (H, W) class map whose maximum is > 0; returns a new tensor.

    Like DINO's, a class map that is positive and constant becomes NaN (0 / 0), which the argmax then picks.
    """
    hi = soft.amax(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    shifted = soft - soft.amin(dim=(1, 2), keepdim=True)
    return torch.where(hi > 0, shifted / shifted.amax(dim=(1, 2), keepdim=True), soft)


def labels_to_mask(
    soft: torch.Tensor, out_size: tuple[int, int], patch_size: int, config: PropagationConfig
) -> torch.Tensor:
    """Soft labels (C, h, w) at patch resolution -> (H, W) int64 id map at ``out_size`` = (H, W).

    ``config.upsample == "patch"`` (DINO): bilinear x ``patch_size``, ``norm_mask`` if set, argmax, nearest
    resize (PIL rule) to ``out_size``. ``"image"`` (CRW): bilinear resize to ``out_size``, ``norm_mask`` if
    set, argmax.
    """
    if soft.dim() != 3:
        raise InputError(f"soft labels must be (C, h, w), got {tuple(soft.shape)}")
    x = soft.float()[None]  # (1, C, h, w)
    if config.upsample == "patch":
        # DINO eval_video_segmentation.py, exactly: scale_factor with recompute_scale_factor=False.
        x = F.interpolate(
            x, scale_factor=patch_size, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )[0]
    else:
        x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    if config.norm_mask:
        x = norm_mask(x)
    ids = x.argmax(dim=0)  # first maximal class on ties, like torch.max(dim=0)
    if tuple(ids.shape) != tuple(out_size):
        ids = resize_nearest(ids, out_size)
    return ids
