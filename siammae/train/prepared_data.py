"""Training pairs from a prepared data set (``siammae-prepare``): two JPEG reads per pair instead of a video seek.

The sampling is :class:`~siammae.train.data.PairSampling`'s (shared with video files), draw for draw (gap,
positions, crop box, flip from the generator of ``(seed, epoch, position)``), so a prepared set gives the pairs of
its source videos (at the prepared short side, to JPEG precision) and a resume stays exact. Only the frames of the
pairs are read, each with one ``pread`` or one HTTP range request through the index
(:class:`~siammae.data.shards.PreparedFrames`).

Two places to decode:

- ``decode="cpu"``: the DataLoader workers decode (``torchvision.io.decode_jpeg``, libjpeg-turbo: 1.2-1.5x faster than
  PIL here and pixel-identical), crop and resize, as for videos.
- ``decode="device"``: the workers only read bytes and draw the random choices; the training process decodes the
  whole batch at once with nvJPEG (``decode_jpeg(list, device="cuda")``) and crops and resizes on the GPU
  (:func:`decode_views`). The CPU work per pair is then about 0.3 ms (index, two reads, draws, collate), which
  is what lets 16 cores feed an H200 (``benchmarks/bench_loader.py``). Colour jitter is not on this path:
  ``augment`` color / both decode on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from siammae.data.shards import PreparedFrames
from siammae.errors import InputError, VideoError
from siammae.train.data import PairSampling, apply_view


def _check_jpeg(data: bytes, where: str) -> None:
    """Cheap integrity check before decoding elsewhere: a JPEG starts with SOI and ends with EOI."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        raise VideoError(f"{where}: not a complete JPEG (corrupt shard?)")


def decode_jpeg_cpu(data: bytes, where: str) -> torch.Tensor:
    """JPEG bytes -> (3, H, W) uint8 RGB (kept channels-first: cropping and resizing it is fastest that way)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    _check_jpeg(data, where)
    try:
        x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise VideoError(f"{where}: cannot decode JPEG ({_reason(e)})") from e
    return x


class PreparedPairDataset(PairSampling):
    """Training pairs from a prepared data set; ``dataset[SampleKey]`` -> as :class:`PairDataset` with
    ``decode="cpu"``, or dict(jpeg (bytes) uint8, lengths (2 * repeat,) int64, views (repeat, 5) int64 = top, left,
    h, w, flip, skipped, short) with ``decode="device"`` (frames in pair order: f1 f2 of pair 0, f1 f2 of pair 1)."""

    def __init__(self, frames: PreparedFrames, size: int, seed: int, gap=(4, 48), repeat: int = 2,
                 crop_scale=(0.5, 1.0), augment: str = "spatial", decode: str = "cpu"):  # fmt: skip
        if decode not in ("cpu", "device"):
            raise ValueError(f"decode={decode!r}: valid: cpu, device")
        if not len(frames):
            raise InputError(f"{frames.location}: the prepared data set holds no videos")
        super().__init__(size, seed, gap, repeat, crop_scale, augment)
        self.frames = frames
        self.decode = "cpu" if augment in ("color", "both") else decode

    def __len__(self) -> int:
        return len(self.frames)

    def path(self, i: int) -> str:
        return self.frames.source(i)

    def num_frames(self, i: int) -> int:
        return self.frames.num_frames(i)

    def read(self, video: int, indices: list[int]) -> list[torch.Tensor]:
        data = self.frames.read(video, indices)
        return [decode_jpeg_cpu(d, self.frames.where(video, t)) for d, t in zip(data, indices, strict=True)]

    def _sample(self, video: int, rng: np.random.Generator) -> dict:
        if self.decode == "cpu":
            return super()._sample(video, rng)
        # device: the same draws in the same order, the bytes and views handed to decode_views
        pairs, short = self.draw_pairs(video, rng)
        indices = [t for pair in pairs for t in pair]
        data = self.frames.read(video, indices)
        for d, t in zip(data, indices, strict=True):
            _check_jpeg(d, self.frames.where(video, t))
        height, width = (int(x) for x in self.frames.sizes[video])
        views = [(*box, int(flip)) for box, flip in (self.draw_view(rng, height, width) for _ in pairs)]
        return {
            "jpeg": torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8),
            "lengths": torch.tensor([len(d) for d in data], dtype=torch.int64),
            "views": torch.tensor(views, dtype=torch.int64).reshape(-1, 5),  # (repeat, 5)
            "where": [(self.path(video), self.frames.where(video, t)) for t in indices],  # for error reports
            "short": short,
        }


def collate_jpeg(samples: list[dict]) -> dict:
    """Concatenate ``decode="device"`` samples: one byte buffer, lengths and views, video-major as ``collate``."""
    return {
        "jpeg": torch.cat([s["jpeg"] for s in samples]),
        "lengths": torch.cat([s["lengths"] for s in samples]),
        "views": torch.cat([s["views"] for s in samples]),
        "where": [x for s in samples for x in s["where"]],
        "skipped": [x for s in samples for x in s["skipped"]],
        "short": sum(s["short"] for s in samples),
    }


def decode_views(batch: dict, size: int, device: torch.device):
    """Decode a :func:`collate_jpeg` batch on ``device`` (nvJPEG on CUDA, batched) and crop, resize, flip there
    -> f1, f2 (B, 3, size, size) uint8 on ``device`` (through ``apply_view``, as the CPU path) and the frames that could
    not be decoded as (source, reason); those are grey, so that one damaged JPEG does not stop a run (the workers
    already turned away truncated ones)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    ends = batch["lengths"].cumsum(0).tolist()
    starts = [0, *ends[:-1]]
    buf = batch["jpeg"].cpu()
    data = [buf[a:b] for a, b in zip(starts, ends, strict=True)]  # 1-D uint8 views, one per frame
    bad = []
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # list of (3, H, W) uint8
    except RuntimeError:  # one bad frame fails the whole batch: decode one by one to find it
        images = []
        for d, (source, where) in zip(data, batch["where"], strict=True):
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                images.append(None)
                bad.append((source, f"{where}: cannot decode JPEG ({_reason(e)})"))
    f1, f2 = [], []
    for k, (top, left, h, w, flip) in enumerate(batch["views"].tolist()):
        pair = [img if img is not None else _grey(top + h, left + w, device) for img in images[2 * k : 2 * k + 2]]
        x = apply_view(pair, (top, left, h, w), bool(flip), size)  # (2, 3, size, size)
        f1.append(x[0])
        f2.append(x[1])
    return torch.stack(f1), torch.stack(f2), bad


def _reason(e: RuntimeError) -> str:
    """torchvision's message without its source location (``decode_jpeg, .../decode_jpeg.cpp:171, <reason>``)."""
    return str(e).strip().splitlines()[-1].rsplit(".cpp:", 1)[-1].partition(", ")[2] or str(e)


def _grey(height: int, width: int, device) -> torch.Tensor:
    return torch.full((3, height, width), 128, dtype=torch.uint8, device=device)
