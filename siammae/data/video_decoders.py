"""Which library decodes the frames of a training pair from a video file: torchcodec where it works, else PyAV.

``benchmarks/bench_loader.py`` measures both on the pair pattern (open, seek, two frames, twice per video) on
10 s 480p h264 clips: torchcodec 0.17 (``VideoDecoder(seek_mode="approximate")``) took 192 ms of CPU per pair and
PyAV 235 ms, 18 % less, with identical frames; see ``benchmarks/results/bench_loader-cpu.md`` for the
numbers. torchcodec is optional and needs FFmpeg's shared libraries (4 to 8) on the system, so it is imported
inside :func:`torchcodec_available`; when it is not installed or cannot load, PyAV (``read_frames``) is used.
``SIAMMAE_VIDEO_DECODER=pyav|torchcodec`` overrides the choice (``torchcodec`` when it cannot load is an error
naming the package).

Frame ``i`` is the ``i``-th frame in presentation order for both (constant frame rate videos: the same frame as
``read_frames``'s ``start + i / fps``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from siammae.errors import MissingExtraError, VideoError

DECODERS = ("auto", "pyav", "torchcodec")
ENV = "SIAMMAE_VIDEO_DECODER"


@functools.cache
def torchcodec_available() -> bool:
    """True when torchcodec imports and finds its FFmpeg libraries."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # not installed, or its FFmpeg libraries are missing
        return False
    return True


def video_decoder(choice: str | None = None) -> str:
    """The decoder to use: ``choice`` (or the environment's ``SIAMMAE_VIDEO_DECODER``, default auto) resolved."""
    choice = choice or os.environ.get(ENV, "auto")
    if choice not in DECODERS:
        raise ValueError(f"{ENV}={choice!r}: valid: {', '.join(DECODERS)}")
    if choice == "torchcodec" and not torchcodec_available():
        raise MissingExtraError("torchcodec and FFmpeg 4-8 shared libraries", "torchcodec", "decoding with torchcodec")
    if choice == "auto":
        return "torchcodec" if torchcodec_available() else "pyav"
    return choice


def read_frames_torchcodec(path: str | os.PathLike, indices: list[int]) -> list[np.ndarray]:
    """Frames at ``indices`` (any order, repeats allowed) as (H, W, 3) uint8 arrays, in the order asked."""
    from torchcodec.decoders import VideoDecoder

    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    try:
        # approximate: seek from the header's frame rate instead of scanning the whole file at open
        decoder = VideoDecoder(str(path), seek_mode="approximate", dimension_order="NHWC", num_ffmpeg_threads=1)
        n = decoder.metadata.num_frames
        if n is not None and wanted and wanted[-1] >= n:
            raise VideoError(f"{path}: frame {wanted[-1]} asked but the video has {n} frames")
        batch = decoder.get_frames_at(wanted).data  # (K, H, W, 3) uint8
    except (RuntimeError, ValueError, IndexError) as e:
        raise VideoError(f"{path}: decoding failed while reading frames {wanted} ({str(e).splitlines()[0]})") from e
    got = {t: batch[k].numpy() for k, t in enumerate(wanted)}
    return [got[int(i)] for i in indices]
