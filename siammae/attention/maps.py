"""What the encoder looks at: the [CLS] self-attention of the last block, per head, as maps over the patch grid.

DINO (Caron et al. 2021, Fig. 1; facebookresearch/dino ``visualize_attention.py``) and the SiamMAE project page
show a ViT's [CLS] query attending to the patches in the last block: heads pick out objects and their boundaries.
:func:`attention_maps` computes these maps for a SiamMAE or ViTEncoder; :func:`render_attention` streams a video,
a frame folder or an image through it and writes the frames with the maps blended over them.

The blocks run attention through ``F.scaled_dot_product_attention`` (fused kernels on GPU), which never forms the
weights. So ``blocks[:-1]`` run as usual and only the last block's attention of the [CLS] query is computed
explicitly from its ``norm1`` and ``attn.qkv``: a (B, nh, 1, L) product, negligible next to the encoder.

Input: frames become encoder input exactly as ``siammae-track`` makes it for the same preset and ``size`` (the
preset's input rule, :mod:`siammae.propagation.inputs`: size rule, OpenCV resize, mean / std), so the maps show
what the tracker's encoder sees.

Normalisation: DINO plots row 0 of the softmax over all 1 + L keys with the [CLS] column dropped, which sums to
1 - a_cls, a mass that differs per head and per frame. Here each map is the softmax of the [CLS] query over the L
patch keys only, i.e. DINO's row renormalised over the patches (a softmax restricted to a subset of keys and
renormalised is the softmax over that subset). Each map is then a distribution over the patches that sums to 1, so
heads and frames are comparable whatever attention a head keeps on the [CLS] token itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from siammae.attention.spec import HEADS_HELP, check_output, default_output, resolve_heads  # noqa: F401  (public)
from siammae.data.colormaps import _CMAP_POLY, CMAPS
from siammae.data.transforms import normalize
from siammae.data.video import Frame, open_video, read_image, write_video
from siammae.device import resolve_device, resolve_dtype
from siammae.errors import InputError
from siammae.io import atomic_write
from siammae.memory import check_encoder_fits
from siammae.model.checkpoint import unwrap
from siammae.model.encoder import ViTEncoder
from siammae.output_folder import OutputFolder
from siammae.propagation.config import Preset, get_preset
from siammae.propagation.inputs import chunks, resize_frame, to_batch


# --------------------------------------------------------------------------------------------------- the maps
def _encoder(model) -> ViTEncoder:
    model = unwrap(model)
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"attention maps need a SiamMAE or ViTEncoder, got {type(model).__name__}")
    return encoder


@torch.no_grad()
def attention_maps(model, frames: torch.Tensor, heads=None, pos_interp: str = "auto") -> torch.Tensor:
    """[CLS] attention of the last encoder block over the patches: (B, 3, H, W) -> (B, n, h, w) float32.

    ``frames`` are ImageNet-normalised, as for ``model.features`` (:func:`render_attention` makes
    them by the preset's input rule); H and W multiples of the patch size. ``heads`` (see :func:`resolve_heads`)
    picks the n maps, in the order given; "mean" gives one map, the mean over all heads. Every map sums to 1 over the
    h*w patches.
    """
    encoder = _encoder(model)
    if frames.ndim != 4 or frames.shape[1] != encoder.config.in_chans:
        raise InputError(f"frames must be (B, {encoder.config.in_chans}, H, W), got {tuple(frames.shape)}")
    selected = resolve_heads(heads, encoder.num_heads)
    B = frames.shape[0]
    h, w = encoder.grid(frames)

    x = encoder.prepare_tokens(frames, pos_interp)  # (B, 1 + L, D)
    for blk in encoder.blocks[:-1]:
        x = blk(x)
    last = encoder.blocks[-1]
    attn = last.attn
    nh, hd = attn.num_heads, attn.head_dim
    y = last.norm1(x)  # (B, 1 + L, D)
    qkv = attn.qkv(y).reshape(B, 1 + h * w, 3, nh, hd).permute(2, 0, 3, 1, 4)  # (3, B, nh, 1 + L, hd)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # identities unless the blocks use qk-norm
    with torch.autocast(frames.device.type, enabled=False):  # logits and softmax in fp32 under any autocast
        q_cls = q[:, :, :1].float() * attn.scale  # (B, nh, 1, hd)
        logits = q_cls @ k[:, :, 1:].float().transpose(-2, -1)  # (B, nh, 1, L): patch keys only, see module doc
        maps = logits.softmax(dim=-1).reshape(B, nh, h, w)  # (B, nh, h, w)
    if selected == "mean":
        return maps.mean(dim=1, keepdim=True)  # (B, 1, h, w)
    return maps[:, selected]  # (B, n, h, w)


# ------------------------------------------------------------------------------------------------- rendering
@functools.cache
def colormap_lut(name: str = "inferno") -> np.ndarray:
    """(256, 3) uint8 RGB table of a colormap ("inferno" or "viridis"), value 0 first."""
    if name not in _CMAP_POLY:
        raise InputError(f"colormap {name!r} is not available: use one of {', '.join(CMAPS)}")
    t = np.linspace(0.0, 1.0, 256)[:, None]  # (256, 1)
    rgb = np.zeros((256, 3))
    for c in reversed(_CMAP_POLY[name]):  # Horner: ((c6 t + c5) t + ...) t + c0
        rgb = rgb * t + np.asarray(c)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _lut_index(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) -> (n, H, W) colormap entries 0..255: bilinear upsampling, then each map over its own maximum."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]  # (n, H, W)
    peak = up.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)  # (n, 1, 1)
    return (up / peak).clamp_(0.0, 1.0).mul_(255).round_().long()  # (n, H, W)


def heatmaps(maps: torch.Tensor, size: tuple[int, int], cmap: str = "inferno") -> torch.Tensor:
    """(n, h, w) attention -> (n, H, W, 3) uint8 colour images at ``size`` (H, W).

    Each map is upsampled bilinearly, then scaled by its own maximum: the head's peak is the top of the colormap.
    """
    lut = torch.from_numpy(colormap_lut(cmap)).to(maps.device)  # (256, 3)
    return lut[_lut_index(maps, size)]  # (n, H, W, 3)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for n tiles: as square as possible, wider than tall (6 -> 2x3, 12 -> 3x4, 3 -> 1x3)."""
    rows = max(1, math.isqrt(n))
    return rows, math.ceil(n / rows)


def overlay(
    rgb: np.ndarray,
    maps: torch.Tensor,
    names: list[str] | None = None,
    cmap: str = "inferno",
    alpha: float = 0.6,
) -> np.ndarray:
    """Blend each (h, w) map of ``maps`` (n, h, w) over the frame ``rgb`` (H, W, 3) uint8 and tile the n results
    in a :func:`grid_shape` grid; (rows*H, cols*W, 3) uint8. ``names`` labels the tiles (e.g. "head 2")."""
    lut = _blend_lut(cmap, alpha, maps.device)
    base = torch.from_numpy(np.ascontiguousarray(rgb)).to(maps.device)  # (H, W, 3) uint8
    return _tile(_blend(base[None], maps[None], lut, alpha)[0].cpu().numpy(), names)


def _blend_lut(cmap: str, alpha: float, device: torch.device) -> torch.Tensor:
    """(256, 3) float colormap times ``alpha``: the heat term of the blend, one gather per tile."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha {alpha} is not in [0, 1]")
    return torch.from_numpy(colormap_lut(cmap)).to(device).float() * alpha


def _blend(rgb: torch.Tensor, maps: torch.Tensor, lut: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * frame + alpha * heat: frames (B, H, W, 3) uint8, maps (B, n, h, w) -> (B, n, H, W, 3) uint8."""
    B, n = maps.shape[:2]
    H, W = rgb.shape[1:3]
    heat = lut[_lut_index(maps.flatten(0, 1), (H, W))].view(B, n, H, W, 3)
    return (rgb[:, None].float() * (1.0 - alpha) + heat).round_().byte()


def _tile(tiles: np.ndarray, names: list[str] | None) -> np.ndarray:
    """(n, H, W, 3) uint8 tiles -> one (rows*H, cols*W, 3) canvas in a :func:`grid_shape` grid, labelled."""
    n, H, W = tiles.shape[:3]
    rows, cols = grid_shape(n)
    canvas = np.zeros((rows * H, cols * W, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * H : (r + 1) * H, c * W : (c + 1) * W] = tiles[i]
    if names:
        stamp, boxes = _labels(tuple(names), H, W, cols, canvas.shape[:2])
        for box in boxes:
            canvas[box] = stamp[box]
    return canvas


@functools.lru_cache(maxsize=8)
def _labels(names: tuple[str, ...], H: int, W: int, cols: int, shape: tuple[int, int]):
    """Each tile's name in its top-left corner, white on a black box, drawn once per layout: (the canvas with only
    the labels drawn, the (rows, cols) slices of the boxes). The boxes are opaque, so they paste over any frame."""
    im = Image.new("RGB", shape[::-1])
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    boxes = []
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        x, y = c * W + 4, r * H + 4
        left, top, right, bottom = draw.textbbox((x, y), name, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
        draw.text((x, y), name, fill=(255, 255, 255), font=font)
        boxes.append((slice(top - 2, bottom + 3), slice(left - 2, right + 3)))  # rectangle() includes its corners
    return np.asarray(im), boxes


# ------------------------------------------------------------------------------------------------- streaming
def iter_attention(
    model,
    frames: Iterable[Frame],
    heads=None,
    size=None,
    batch_size: int = 4,
    dtype: str = "fp32",
    cmap: str = "inferno",
    alpha: float = 0.6,
    labels: bool = True,
    pos_interp: str = "auto",
    preset: str | Preset | None = None,
) -> Iterator[tuple[Frame, np.ndarray]]:
    """Stream frames through :func:`attention_maps`; yields ``(frame, rendered)`` in order, rendered an RGB uint8
    grid of the chosen heads over the encoder's input frame (see :func:`overlay`).

    ``preset`` and ``size`` choose the input as for the tracker (``Tracker(model, preset, size=size)``): the preset's
    input rule (None: the default preset), ``size`` a short side (``480``) or a fixed size (``"480x880"``).

    The model runs on the device its parameters are on, ``batch_size`` frames at a time; only one batch is held.
    ``dtype`` "fp16" / "bf16" runs the encoder under autocast (the last block's softmax stays fp32).
    """
    encoder = _encoder(model)
    selected = resolve_heads(heads, encoder.num_heads)
    names = (["mean of heads"] if selected == "mean" else [f"head {i}" for i in selected]) if labels else None
    device = encoder.cls_token.device
    chosen = get_preset(preset, size=size)  # the tracker's input rule; a bad preset or size fails here
    rule, what = chosen.inputs, f"size {size}" if size is not None else f"preset {chosen.name}"
    try:
        amp = resolve_dtype(dtype, device)
    except ValueError as e:
        raise InputError(str(e)) from None
    autocast = torch.autocast(device.type, dtype=amp) if amp != torch.float32 else contextlib.nullcontext()
    lut = _blend_lut(cmap, alpha, device)  # fails on a bad colormap or opacity before any frame is decoded
    resized = None

    def run(batch: list[Frame]) -> Iterator[tuple[Frame, np.ndarray]]:
        with torch.inference_mode():
            x = to_batch([resize_frame(f.rgb, resized, rule.resize) for f in batch], device)  # (B, 3, H, W) in [0, 1]
            with autocast:
                maps = attention_maps(encoder, normalize(x, rule.mean, rule.std), selected, pos_interp)  # (B, n, h, w)
            shown = (x.permute(0, 2, 3, 1) * 255).round().byte()  # (B, H, W, 3): the model input
            tiles = _blend(shown, maps, lut, alpha).cpu().numpy()  # (B, n, H, W, 3), one copy to the host
        for f, t in zip(batch, tiles, strict=True):  # outside inference mode: the caller runs in between
            yield f, _tile(t, names)

    for batch in chunks(frames, batch_size):
        if resized is None:
            resized = rule.frame_size(*batch[0].rgb.shape[:2], encoder.patch_size)  # (H, W), as the tracker's
            check_encoder_fits(encoder, *resized, batch_size, device, what)
        yield from run(batch)


def render_attention(
    model,
    input: str | os.PathLike,
    out: str | os.PathLike | None = None,
    heads=None,
    size=None,
    batch_size: int = 4,
    device: str = "auto",
    dtype: str = "fp32",
    cmap: str = "inferno",
    alpha: float = 0.6,
    labels: bool = True,
    progress: bool = False,
    preset: str | Preset | None = None,
) -> Path:
    """Write the attention maps of ``model`` (a SiamMAE or ViTEncoder) over ``input`` to ``out``; returns ``out``.

    ``input``: a video file, a frame folder, or an image (jpg / png / ...). ``out`` (default
    :func:`default_output`): for an image, an image file (.png / .jpg); for a video or frame folder, a video file
    (.mp4 / ...) or a folder (an existing one, or a path without suffix) that receives one PNG per frame, named as
    the frame. ``preset`` / ``size``: the encoder input, as ``siammae-track --preset --size`` makes it (see
    :func:`iter_attention`). Everything is streamed (constant memory) and every file is written atomically.
    """
    get_preset(preset, size=size)  # a bad preset or size fails before the input is opened
    input = Path(input)
    out, is_image, to_folder = check_output(input, out)
    if is_image:
        source, total, fps = [Frame(0, input.stem, read_image(input))], 1, None
    else:
        video = open_video(input)
        source, total, fps = video, video.num_frames, video.fps or 25.0  # frame folders have no rate: 25 fps
    model = unwrap(model).to(resolve_device(device)).eval()
    rendered = iter_attention(model, source, heads, size, batch_size, dtype, cmap, alpha, labels, preset=preset)
    if progress:
        from tqdm import tqdm

        rendered = tqdm(rendered, total=total, unit="frame", desc=input.name)
    if is_image:
        for _, rgb in rendered:
            _save_image(out, rgb)
    elif to_folder:
        with OutputFolder(out):  # one writer, no planted links, no leftovers of a killed run
            for frame, rgb in rendered:
                _save_image(out / f"{frame.name}.png", rgb)
    else:
        write_video(out, (rgb for _, rgb in rendered), fps=fps)
    return out


def _save_image(path: Path, rgb: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(rgb).save(tmp)
