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
    soft: torch.Tensor,
    out_size: tuple[int, int],
    patch_size: int,
    config: PropagationConfig,
    input_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Soft labels (C, h, w) at patch resolution -> (H, W) int64 id map at ``out_size`` = (H, W).

    ``config.upsample == "patch"`` (DINO): bilinear x ``patch_size``, ``norm_mask`` if set, argmax, nearest
    resize (PIL rule) to ``out_size``. ``"image"``: bilinear resize to ``out_size``, ``norm_mask`` if
    set, argmax. ``"crw"`` (CRW's code, :func:`crw_read_out`): bilinear to ``input_size`` (the encoder's input,
    (H_in, W_in)), argmax, OpenCV's nearest to ``out_size``; ``norm_mask`` does not apply.
    """
    if soft.dim() != 3:
        raise InputError(f"soft labels must be (C, h, w), got {tuple(soft.shape)}")
    if config.upsample == "crw":
        if input_size is None:
            raise InputError("the crw read-out resizes to the encoder's input size: pass input_size=(H_in, W_in)")
        return crw_read_out(soft, tuple(input_size), tuple(out_size))
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


# ------------------------------------------------------------------------------------------------------------
# The crw preset: CRW's frame-0 labels and read-out, bug for bug (docs/PROTOCOL.md, "The crw preset")
# ------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def crw_palette() -> np.ndarray:
    """(256, 3) uint8 RGB: the palette of CRW's ``eval/palette.py``, which ``eval/convert_davis.py`` maps colours
    to ids with. It is not quite DAVIS's: its first 22 colours are DAVIS's with 191 where DAVIS has 192, and
    entries 22..255 are the greys (i, i, i)."""
    from siammae.data.palette import davis_palette

    pal = davis_palette()[:256].astype(np.uint8).copy()
    head = pal[:22]
    head[head == 192] = 191
    pal[22:] = np.arange(22, 256, dtype=np.uint8)[:, None]
    return pal


CV_CHANNELS = 128  # OpenCV 5's Python binding resizes at most 128 channels at once (CRW's OpenCV took 512)


def _cv_resize(x: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``cv2.resize`` of an (H, W, C) array for any C, ``size`` (width, height): channels are resized apart, in
    groups OpenCV takes, which is the same result (bilinear and nearest work channel by channel)."""
    import cv2

    parts = [
        cv2.resize(np.ascontiguousarray(x[..., c : c + CV_CHANNELS]), size, interpolation=interpolation)
        for c in range(0, x.shape[-1], CV_CHANNELS)
    ]
    return np.concatenate([p.reshape(size[1], size[0], -1) for p in parts], axis=-1)  # one channel comes back 2-D


def crw_first_labels(colours: np.ndarray, input_hw: tuple[int, int], grid: tuple[int, int]):
    """Frame 0's labels as CRW's ``data/vos.py`` makes them: (C, h, w) float32 soft labels and the (C, 3) uint8 RGB
    colour of each channel.

    colours: (H, W, 3) uint8 RGB, the annotation as ``cv2.imread`` reads it (reversed). CRW calls
    ``cv2.resize(lblimg, (newh, neww), cv2.INTER_NEAREST)``: the third positional argument is ``dst``, so the
    interpolation is the default, bilinear, and the annotation's edges become new colours (182 grey levels on a
    0 / 255 DAVIS-2016 mask); ``(newh, neww)`` is also (width, height) swapped, which only matters for a
    non-square input. Every colour of the resized frame is a channel (``np.unique`` rows of BGR, sorted), its
    one-hot map is resized bilinearly to the grid (``cv2.resize(np.float32(onehot), (w, h), cv2.INTER_LINEAR)``).
    """
    import cv2  # deferred: only this preset needs it here

    H_in, W_in = input_hw
    h, w = grid
    bgr = np.ascontiguousarray(np.asarray(colours, dtype=np.uint8)[..., ::-1])
    resized = cv2.resize(bgr, (H_in, W_in))  # CRW's (newh, neww) as (width, height); bilinear
    lblset = np.unique(resized.reshape(-1, 3), axis=0)  # (C, 3) BGR, sorted
    onehot = np.stack([np.all(resized == c, axis=-1) for c in lblset], axis=-1).astype(np.float32)  # (W_in, H_in, C)
    small = _cv_resize(onehot, (w, h), cv2.INTER_LINEAR)  # (h, w, C)
    soft = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))  # (h, w, C) -> (C, h, w)
    return soft, np.ascontiguousarray(lblset[:, ::-1])


def crw_palette_ids(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 ids as ``eval/convert_davis.py`` assigns them: the colour's index in
    :func:`crw_palette`, 0 when it is not a palette colour. Grey 128 is entry 7 and entry 128; CRW's assignment of
    both indices then fails unless one or two pixels have it, and siammae takes the first, 7."""
    pal = crw_palette().astype(np.int64)
    code = lambda c: (c[..., 0].astype(np.int64) << 16) | (c[..., 1].astype(np.int64) << 8) | c[..., 2]  # noqa: E731
    lut = {}
    for i, c in enumerate(code(pal).tolist()):
        lut.setdefault(c, i)
    keys = code(np.asarray(rgb))
    return np.vectorize(lambda c: lut.get(c, 0), otypes=[np.uint8])(keys) if keys.size else keys.astype(np.uint8)


def crw_read_out(soft: torch.Tensor, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Soft labels (C, h, w) -> (H, W) int64 channel map as CRW's read-out: ``dump_predictions`` resizes them
    bilinearly (``cv2.resize``) to the encoder's input size and takes the first maximal channel (``np.argmax``);
    ``eval/convert_davis.py`` then resizes the ids by OpenCV's nearest neighbour (``cv2.INTER_NEAREST``, not PIL's
    rule) to ``out_hw``. The channel map is resized here; the ids it stands for are :func:`crw_palette_ids` of the
    channels' colours."""
    import cv2

    H_in, W_in = input_hw
    H, W = out_hw
    pred = np.ascontiguousarray(soft.detach().float().cpu().numpy().transpose(1, 2, 0))  # (h, w, C)
    up = _cv_resize(pred, (W_in, H_in), cv2.INTER_LINEAR)  # (H_in, W_in, C)
    channels = np.argmax(up, axis=-1).astype(np.int32)  # (H_in, W_in)
    if (H_in, W_in) != (H, W):
        channels = cv2.resize(channels.astype(np.float32), (W, H), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return torch.from_numpy(np.asarray(channels, dtype=np.int64))
