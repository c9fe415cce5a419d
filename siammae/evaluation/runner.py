"""Running a frozen encoder plus label propagation over one benchmark sequence.

The input side of the protocols (PROTOCOL.md, "Features"), which the propagation engine leaves to its caller:

- ``dino``: the short side becomes 480 and the long side is floored to a multiple of 64 (854x480 -> 832x480),
  normalised with DINO's std (0.228, 0.224, 0.225).
- ``siammae-*`` (CRW / CropMAE test code): ImageNet std; DAVIS frames at a fixed 480x880 (PROTOCOL.md).
  PROTOCOL.md fixes no size for the other two; the defaults here are JHMDB 320x320 (its frames are 320x240)
  and VIP short side 560 with the aspect kept.

Every choice is a field of :class:`InputConfig`, can be changed (``--size``) and lands in the results'
settings.
"""

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siammae.data.transforms import DINO_STD, IMAGENET_STD, frames_to_batch, target_size
from siammae.data.video import read_image
from siammae.errors import InputError
from siammae.evaluation.png import write_index_png
from siammae.propagation import get_preset, labels_to_mask, mask_to_labels, propagate_labels
from siammae.propagation.features import TorchEncoder
from siammae.propagation.keypoints import heatmaps_to_keypoints, keypoints_to_heatmaps


@dataclass(frozen=True)
class InputConfig:
    """How frames are resized and normalised before the encoder.

    size: (short, long) fixed size (transposed for portrait frames), or None to resize the short side to
        ``short_side`` keeping the aspect, the long side floored to ``long_multiple`` (None: the patch size).
    std: normalisation std (the mean is ImageNet's).
    """

    short_side: int = 480
    long_multiple: int | None = None
    size: tuple[int, int] | None = None
    std: tuple[float, float, float] = IMAGENET_STD

    def frame_size(self, height: int, width: int, patch_size: int) -> tuple[int, int]:
        """(H, W) the encoder sees for a frame of ``height`` x ``width``."""
        if self.size is not None:
            short, long = self.size
            if short % patch_size or long % patch_size:
                raise InputError(f"input size {short}x{long} is not a multiple of the patch size {patch_size}")
            return (short, long) if height <= width else (long, short)
        return target_size(height, width, self.short_side, patch_size, self.long_multiple)


# Defaults per (preset family, benchmark); see the module docstring.
_DINO_INPUT = InputConfig(short_side=480, long_multiple=64, std=DINO_STD)
_CRW_INPUT = {
    "davis": InputConfig(size=(480, 880)),
    "jhmdb": InputConfig(size=(320, 320)),
    "vip": InputConfig(short_side=560),
}


def default_input(preset: str, benchmark: str) -> InputConfig:
    return _DINO_INPUT if preset == "dino" else _CRW_INPUT[benchmark]


def parse_size(text: str, base: InputConfig) -> InputConfig:
    """``"480"`` (short side, aspect kept) or ``"480x880"`` (fixed short x long) applied to ``base``."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return dataclasses.replace(base, short_side=parts[0], size=None)
    if len(parts) == 2 and min(parts) > 0:
        return dataclasses.replace(base, size=(min(parts), max(parts)))
    raise InputError(f"input size {text!r} is not a short side (480) or a short x long size (480x880)")


@dataclass
class Runner:
    """An encoder with the propagation and input settings of one evaluation.

    encoder: a :class:`~siammae.propagation.features.TorchEncoder` (its std should be ``inputs.std``).
    preset, overrides: the propagation preset and the fields that replace its values.
    batch_size: frames encoded at once, and frames per top-k call of the propagation (no effect on results).
    """

    encoder: TorchEncoder
    preset: str
    overrides: dict
    inputs: InputConfig
    batch_size: int = 8

    def __post_init__(self):
        self.config = get_preset(self.preset, **self.overrides)

    def settings(self) -> dict:
        return {
            "preset": self.preset,
            "propagation": dataclasses.asdict(self.config),
            "input": dataclasses.asdict(self.inputs),
        }

    def run_settings(self, benchmark: str, root, max_frames: int | None, extra: dict | None = None, **split) -> dict:
        """The settings stored with a benchmark's results: the benchmark and its split, the data root, the frame
        limit, this runner's settings and ``extra`` (e.g. the checkpoint and its sha256)."""
        return {
            "benchmark": benchmark,
            **split,
            "root": str(Path(root).resolve()),
            "max_frames": max_frames,
            **self.settings(),
            **(extra or {}),
        }

    def write_masks(self, pred_dir: Path, frame_paths: list[Path], first_mask: np.ndarray) -> None:
        """Frame 0's ids and the propagated masks of frames 1.. as indexed PNGs named as the frames (DAVIS layout)."""
        write_index_png(pred_dir / f"{frame_paths[0].stem}.png", first_mask)
        for frame, mask in zip(frame_paths[1:], self.propagate_mask(frame_paths, first_mask), strict=True):
            write_index_png(pred_dir / f"{frame.stem}.png", mask)

    def features(self, frames: Iterable[np.ndarray], size: tuple[int, int]) -> Iterator[torch.Tensor]:
        """(H, W, 3) uint8 frames -> (h, w, D) features, encoded ``batch_size`` frames at a time."""
        batch: list[np.ndarray] = []

        def flush():
            yield from self.encoder(frames_to_batch(batch, size, self.encoder.device))  # (h, w, D) each
            batch.clear()

        for rgb in frames:
            batch.append(rgb)
            if len(batch) == self.batch_size:
                yield from flush()
        if batch:
            yield from flush()

    def _open(self, frame_paths: list[Path]):
        """(frame 0 [H, W, 3], all frames lazily, encoder input size, patch grid (h, w))."""
        first = read_image(frame_paths[0])
        p = self.encoder.patch_size
        size = self.inputs.frame_size(first.shape[0], first.shape[1], p)

        def frames():
            yield first
            for path in frame_paths[1:]:
                rgb = read_image(path)
                if rgb.shape != first.shape:
                    raise InputError(
                        f"frame {path} is {rgb.shape[1]}x{rgb.shape[0]} but {frame_paths[0].name} is "
                        f"{first.shape[1]}x{first.shape[0]}"
                    )
                yield rgb

        return first, frames(), size, (size[0] // p, size[1] // p)

    def _propagate(self, frames, size, labels) -> Iterator[torch.Tensor]:
        labels = labels.to(self.encoder.device)
        yield from propagate_labels(self.features(frames, size), labels, self.config, chunk_size=self.batch_size)

    def propagate_mask(self, frame_paths: list[Path], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        """Masks [H, W] of frames 1.. from the id map [H, W] of frame 0 (original resolution in and out)."""
        _, frames, size, grid = self._open(frame_paths)
        labels = mask_to_labels(torch.from_numpy(first_mask.astype(np.int64)), grid)  # (h, w) ids
        for soft in self._propagate(frames, size, labels):  # (C, h, w)
            yield labels_to_mask(soft, first_mask.shape, self.encoder.patch_size, self.config).cpu().numpy()

    def propagate_keypoints(
        self, frame_paths: list[Path], first_points: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """([J, 2] pixels, [J] visible) of frames 1.. from the [J, 2] (x, y) pixels of frame 0."""
        first, frames, size, grid = self._open(frame_paths)
        heatmaps = keypoints_to_heatmaps(first_points, first.shape[:2], grid)  # (1 + J, h, w)
        for soft in self._propagate(frames, size, heatmaps):
            yield heatmaps_to_keypoints(soft, first.shape[:2])
