"""What ``siammae-attn`` is asked, checked without torch: the heads (:func:`resolve_heads`) and where the maps go
(:func:`default_output`, :func:`check_output`). Shared by the maps (:mod:`~siammae.attention.maps`) and the job
(:mod:`~siammae.attention.job`)."""

from __future__ import annotations

import os
from pathlib import Path

from siammae.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from siammae.errors import InputError

HEADS_HELP = "'all', 'mean' or comma-separated head indices such as 0,2,5"
OUT_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def resolve_heads(heads, num_heads: int | None) -> list[int] | str:
    """The heads to show: a list of indices, or "mean" for the mean over all heads.

    ``heads``: None or "all" (every head), "mean", a list of indices, or a string such as "0,2,5".
    A malformed spec or an index outside 0..num_heads-1 is an :class:`InputError` naming it; ``num_heads`` None
    (not known before the model loads) checks the form only.
    """
    import numpy as np

    if heads is None or heads == "all":
        return list(range(num_heads or 0))
    if heads == "mean":
        return "mean"
    if isinstance(heads, str):
        try:
            heads = [int(s) for s in heads.split(",")]
        except ValueError:
            raise InputError(f"heads {heads!r} is not valid: use {HEADS_HELP}") from None
    heads = list(heads)
    if not heads:
        raise InputError(f"no heads selected: use {HEADS_HELP}")
    for i in heads:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"head {i!r} is not an integer: use {HEADS_HELP}")
        if i < 0 or (num_heads is not None and i >= num_heads):
            top = f" (0-{num_heads - 1})" if num_heads else ""
            raise InputError(f"head {i} is out of range: the model has {num_heads or 'no'} heads{top}")
    dup = sorted({i for i in heads if heads.count(i) > 1})
    if dup:
        raise InputError(f"head {dup[0]} is selected twice in {heads}")
    return [int(i) for i in heads]


def _kind(path: Path) -> str:
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return "image"
    return "video"  # a video file or a frame folder; open_video reports anything else


def default_output(input: str | os.PathLike) -> Path:
    """``<input name>_attn.png`` for an image, ``<input name>_attn.mp4`` for a video or frame folder, in the
    current folder."""
    path = Path(input)
    return Path(f"{path.stem}_attn{'.png' if _kind(path) == 'image' else '.mp4'}")


def check_output(input: Path, out: str | os.PathLike | None) -> tuple[Path, bool, bool]:
    """(the output path, whether the input is an image, whether the output is a folder of PNGs): an image gives an
    image file; a video or a frame folder a video file or a folder (an existing one, or a path without suffix)."""
    out = Path(out) if out is not None else default_output(input)
    suffix = out.suffix.lower()
    if _kind(input) == "image":
        if suffix not in OUT_IMAGE_EXTENSIONS:
            raise InputError(
                f"{input} is an image: the output {out} must be an image file ({', '.join(OUT_IMAGE_EXTENSIONS)})"
            )
        return out, True, False
    to_folder = out.is_dir() or not suffix
    if not to_folder and suffix not in VIDEO_EXTENSIONS:
        raise InputError(
            f"{input} is a video: the output {out} must be a video file ({', '.join(VIDEO_EXTENSIONS)}) "
            "or a folder for one PNG per frame"
        )
    return out, False, to_folder
