"""Object masks in and out: every common mask format -> an id map, and id maps -> indexed DAVIS PNGs.

An id map is an (H, W) uint8 array: 0 is the background, 1..255 are objects. Input masks may be
- mode P: the pixel values are the ids (the palette is ignored), as DAVIS / YouTube-VOS annotations;
- mode L (or LA) with values {0, 255}: one object, id 1 (DAVIS-2016 ground truth); other L values are ids;
- mode 1: one object, id 1;
- mode I / I;16: the values are ids (at most 255);
- RGB / RGBA: each distinct colour is an object (black, or alpha 0, is the background). Colours of the DAVIS palette
  keep their palette index as id, so a DAVIS mask saved as RGB reads back with its ids; otherwise objects are
  numbered 1, 2, ... in the order of their colours' 24-bit values.
Output masks are indexed PNGs with the DAVIS palette, written atomically (a temp name, then a rename), so an
interrupted run never leaves a torn file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from siammae.data.images import open_image, upright, upright_size
from siammae.data.palette import davis_palette, davis_palette_flat
from siammae.data.video import IMAGE_EXTENSIONS, images_by_stem, list_frame_files
from siammae.errors import InputError, cause
from siammae.io import atomic_write

MAX_ID = 255  # an indexed PNG holds ids 0..255
ASPECT_TOLERANCE = 0.01  # relative; 853x480 vs 854x480 is the same aspect, 640x480 vs 854x480 is not


class MaskResizeWarning(UserWarning):
    """A mask had the frame's aspect but not its size and was resized by nearest neighbour."""


def image_to_ids(im: Image.Image, name: str | os.PathLike = "mask") -> np.ndarray:
    """A PIL image in any supported mode -> (H, W) uint8 id map (see the module docstring)."""
    mode = im.mode
    if mode in ("P", "PA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(im, dtype=np.uint8).copy()  # True -> 1
    if getattr(im, "format", None) == "JPEG":
        raise InputError(
            f"{name}: mask is a JPEG, whose compression blurs the object colours into many false objects; "
            "save masks as PNG (indexed / mode P, one value per object)"
        )
    if mode in ("L", "LA"):
        a = np.asarray(im.getchannel(0), dtype=np.uint8)
        if np.isin(a, (0, 255)).all():
            return (a == 255).astype(np.uint8)  # DAVIS-2016 style binary mask: 255 is the object
        check_not_blended(a, name)
        return a.copy()
    if mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > MAX_ID:
            raise InputError(
                f"{name}: mask ids range {a.min()}..{a.max()}; ids must be 0..{MAX_ID} (an indexed PNG's range)"
            )
        return a.astype(np.uint8)
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return _colours_to_ids(im, name)
    raise InputError(f"{name}: unsupported mask image mode {mode!r} (use P, L, 1, I, RGB or RGBA)")


def _colours_to_ids(im: Image.Image, name) -> np.ndarray:
    rgba = np.asarray(im.convert("RGBA"))  # (H, W, 4)
    rgb = rgba[..., :3].astype(np.int64)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W) 24-bit colour
    key[rgba[..., 3] == 0] = 0  # fully transparent pixels are background
    colours, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(key.shape)
    objects = colours[colours != 0]
    if len(objects) > MAX_ID:
        raise InputError(f"{name}: mask has {len(objects)} colours (objects); at most {MAX_ID} are supported")
    check_not_blended(key, name)
    pal = davis_palette().astype(np.int64)
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]  # (256,)
    if np.isin(objects, pal_key[1:]).all():
        index = {int(k): i for i, k in enumerate(pal_key)}
        ids = np.array([index[int(c)] for c in colours], dtype=np.uint8)
    else:
        ids = np.cumsum(colours != 0).astype(np.uint8)  # black -> 0, other colours -> 1, 2, ... in colour order
    return ids[inverse]


# A colour is an edge colour when under this fraction of its pixels lie inside a region of that colour (all four
# neighbours the same). Objects have insides; the blends that anti-aliasing or lossy compression leaves between
# regions do not. A mask is refused when it has at least MIN_EDGE_COLOURS of them and they outnumber the others.
EDGE_INTERIOR_FRACTION = 0.2
MIN_EDGE_COLOURS = 4


def check_not_blended(values: np.ndarray, name) -> None:
    """Raise when the (H, W) colour values of a mask look anti-aliased or compressed (see the constants above)."""
    if values.ndim != 2 or min(values.shape) < 3:
        return
    c = values[1:-1, 1:-1]
    inside = (c == values[:-2, 1:-1]) & (c == values[2:, 1:-1]) & (c == values[1:-1, :-2]) & (c == values[1:-1, 2:])
    colours, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(colours) <= MIN_EDGE_COLOURS:
        return
    inverse = inverse.reshape(values.shape)[1:-1, 1:-1]
    interior = np.bincount(inverse[inside], minlength=len(colours))
    edge = (interior < EDGE_INTERIOR_FRACTION * counts) & (colours != 0)
    n_edge, n_solid = int(edge.sum()), int((~edge & (colours != 0)).sum())
    if n_edge >= MIN_EDGE_COLOURS and n_edge > n_solid:
        raise InputError(
            f"{name}: mask has {len(colours) - 1} colours, {n_edge} of them only along the edges of other regions: "
            "it looks anti-aliased or compressed, which would make each blend a false object; save it without "
            "smoothing as an indexed PNG (mode P, one value per object) or with exact flat colours"
        )


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image file -> (H, W) uint8 id map; a one-line InputError naming the file if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such mask file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a mask image")
    try:
        with open_image(path, InputError) as im:
            im.load()
            return image_to_ids(upright(im), path)  # as displayed, like the frames (siammae.data.images)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: cannot read mask image ({cause(e, path)})") from e


def mask_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of a mask file from its header alone (for checking a folder of masks before a run)."""
    try:
        with open_image(path, InputError) as im:
            return upright_size(im)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: cannot read mask image ({cause(e, path)})") from e


def check_size(mask_hw: tuple[int, int], frame_hw: tuple[int, int], name) -> None:
    """Raise unless a mask of ``mask_hw`` fits frames of ``frame_hw`` (equal, or the same aspect ratio)."""
    (mh, mw), (fh, fw) = mask_hw, frame_hw
    if (mh, mw) == (fh, fw):
        return
    if abs(mw * fh - fw * mh) > ASPECT_TOLERANCE * fw * mh:
        raise InputError(
            f"{name}: mask is {mw}x{mh} but the video is {fw}x{fh} (another aspect ratio; masks must fit the frames)"
        )


def fit_mask(ids: np.ndarray, frame_hw: tuple[int, int], name="mask") -> np.ndarray:
    """Return ``ids`` at the frame size: unchanged when equal; resized by nearest neighbour (with a
    :class:`MaskResizeWarning`) when only the aspect matches; an InputError otherwise."""
    frame_hw = tuple(int(s) for s in frame_hw)
    if ids.shape == frame_hw:
        return ids
    check_size(ids.shape, frame_hw, name)
    (mh, mw), (fh, fw) = ids.shape, frame_hw
    warnings.warn(
        f"{name}: mask is {mw}x{mh} but the video is {fw}x{fh}; resized by nearest neighbour",
        MaskResizeWarning,
        stacklevel=2,
    )
    return np.asarray(Image.fromarray(ids).resize((fw, fh), Image.NEAREST))


def check_objects(ids: np.ndarray, name="mask") -> np.ndarray:
    """The object ids present in ``ids`` (sorted, without 0); an InputError when there is none."""
    present = np.flatnonzero(np.bincount(ids.reshape(-1), minlength=MAX_ID + 1))
    present = present[present != 0]
    if len(present) == 0:
        raise InputError(f"{name}: mask is empty (every pixel is 0, the background); it must mark at least one object")
    return present


def write_mask(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write an (H, W) id map as an indexed PNG with the DAVIS palette, atomically."""
    if ids.ndim != 2:
        raise ValueError(f"id map must be (H, W), got shape {ids.shape}")
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
            raise InputError(f"{path}: ids {ids.min()}..{ids.max()} do not fit an indexed PNG (0..{MAX_ID})")
        ids = ids.astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(ids))  # mode L
    im.putpalette(davis_palette_flat())  # L -> P with the DAVIS colours
    with atomic_write(path) as tmp:
        im.save(tmp, format="PNG")


def list_masks(mask_dir: str | os.PathLike) -> dict[str, Path]:
    """The mask images of a folder by file stem (the name of the frame each belongs to)."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: no such mask folder")
    by_stem = images_by_stem(
        mask_dir, lambda stem, a, b: InputError(f"{mask_dir}: two masks for frame {stem!r} ({a.name}, {b.name})")
    )
    if not by_stem:
        raise InputError(f"{mask_dir}: mask folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return by_stem


def _later_masks(mask_dir: Path, masks: dict[str, Path], src, names: list[str] | None) -> dict[str, Path]:
    """``masks`` (``list_masks(mask_dir)``) by frame name, every file checked against the video (names, sizes)
    before the run. For a video, ``00012``, ``012`` and ``12`` all name frame 12 (keyed ``00012``); two files that
    name one frame are an error naming both, never one of them dropped."""
    if names is not None:
        unknown = sorted(set(masks) - set(names))
    else:
        count = src.num_frames
        unknown = sorted(n for n in masks if not (_is_index(n) and (count is None or int(n) < count)))
    if unknown:
        what = "frames of the folder" if src.is_folder else "5-digit frame indices of the video"
        raise InputError(f"{mask_dir}: masks {', '.join(unknown[:4])} match no frame (names must be {what})")
    if names is None:
        by_frame: dict[str, Path] = {}
        for n, path in masks.items():
            key = f"{int(n):05d}"
            if key in by_frame:
                raise InputError(
                    f"{mask_dir}: {by_frame[key].name} and {path.name} are both the mask of frame {int(n)}; keep one"
                )
            by_frame[key] = path
        masks = by_frame
    for path in masks.values():
        check_size(mask_size(path), (src.height, src.width), path)
    return masks


def _is_index(name: str) -> bool:
    return name.isascii() and name.isdigit()


def first_masks(mask, mask_dir, src) -> tuple[np.ndarray, dict]:
    """(frame 0's id map, read once and checked against the open video ``src``: its objects, its size; the later
    masks of ``mask_dir`` by frame name, each checked against the video's frame names and size). ``mask``: a file
    or an id map; None takes frame 0's mask from ``mask_dir``. Reads the video's header only (a folder: its
    first frame), so ``siammae-track`` runs it before the model loads."""
    names = [f.stem for f in list_frame_files(src.path)] if src.is_folder else None
    first_name = names[0] if names else "00000"
    listed = list_masks(mask_dir) if mask_dir is not None else {}
    references = _later_masks(Path(mask_dir), listed, src, names) if mask_dir is not None else {}
    if mask is None:
        mask = references.get(first_name)
        if mask is None:
            raise InputError(f"no mask for frame 0 ({first_name}): give --mask, or put {first_name}.png in --mask-dir")
    references.pop(first_name, None)  # frame 0's mask is ``mask``
    if not isinstance(mask, np.ndarray):  # fail before the run, not at frame 0; the run gets the ids, not the file
        path = Path(mask)
        mask = fit_mask(read_mask(path), (src.height, src.width), path)  # same aspect, another size: warned
        check_objects(mask, path)
    return mask, references
