"""Where an export writes, checked before anything is loaded: the default file name and the no-overwrite rule.

Light on purpose (no torch, no onnx): ``siammae-export`` calls :func:`check_outputs` first, so that an existing
output is refused in a fraction of a second, not after the checkpoint has loaded.

Sizes are written HEIGHTxWIDTH everywhere in export, as ``--size 480x880`` and ``--height 480 --width 880`` give
them: the file ``vits8_480x880.onnx`` is built for frames 480 high and 880 wide, and the log lines and errors say
``480x880 (height x width)``.
"""

from __future__ import annotations

import os
from pathlib import Path

from siammae.errors import OutputError
from siammae.output_folder import check_file_free


def size_text(height: int, width: int) -> str:
    """``"480x880"``: the one spelling of an encoder's input size (height x width)."""
    return f"{height}x{width}"


def default_output(ckpt: str | os.PathLike, size: tuple[int, int], dtype: str) -> Path:
    """``<ckpt stem>_<H>x<W>[_fp16].onnx`` next to the checkpoint; for weights by name (``dino-vits8``) in the
    current folder (not in the download cache)."""
    from siammae.model.weights import is_name, weights_stem

    suffix = "_fp16" if dtype == "fp16" else ""
    name = f"{weights_stem(ckpt)}_{size_text(*size)}{suffix}.onnx"
    by_name = is_name(str(ckpt)) and not Path(ckpt).exists()
    return Path(name) if by_name else Path(ckpt).with_name(name)


def engine_path(onnx_path: str | os.PathLike) -> Path:
    """The engine ``build_engine`` writes for an ONNX file: ``<stem>.engine`` beside it."""
    return Path(onnx_path).with_suffix(".engine")


def check_outputs(out: str | os.PathLike, trt: bool = False, overwrite: bool = False) -> Path:
    """``out`` as a Path when the export may write it: not a folder, and (unless ``overwrite``) neither it nor,
    with ``trt``, its engine exists (:func:`~siammae.output_folder.check_file_free`). An
    :class:`~siammae.errors.OutputError` naming the file otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise OutputError(f"{out}: the output must be an .onnx file")
    for path in (out, engine_path(out)) if trt else (out,):
        check_file_free(path, overwrite)
    return out
