"""Running a frame encoder plus label propagation over the sequences of a benchmark.

A :class:`Runner` is a :class:`~siammae.propagation.driver.Tracker` (the path ``siammae-track`` runs too, so a
score describes what tracking does) plus the settings stored with the results. Each preset
(:mod:`siammae.propagation.config`) holds its input rule (size, resize, normalisation; ``dino`` DINO's
``read_frame``, the ``siammae-*`` presets CropMAE's test code), with one override, ``size``, that lands in the
results' settings with the rest of :meth:`~siammae.propagation.config.Preset.record`.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siammae.evaluation.png import write_index_png
from siammae.propagation.driver import Tracker


@dataclass
class Runner:
    """The tracker of one evaluation: encoder, preset, overrides, input convention (``tracker.inputs``)."""

    tracker: Tracker
    progress: bool = False  # a bar per sequence, in frames (done, frames/s, time left), under the sequences' bar

    def _counted(self, items: Iterator, frame_paths: list[Path]) -> Iterator:
        """``items`` (one per frame of ``frame_paths``) through a frame progress bar when ``progress``: the
        sequences' bar alone says nothing for the minutes a long sequence takes on a CPU."""
        if not self.progress:
            return items
        from tqdm import tqdm

        name = frame_paths[0].parent.name if frame_paths else ""
        return tqdm(items, total=len(frame_paths), desc=f"  {name}", unit="frame", leave=False, dynamic_ncols=True)

    @property
    def config(self):
        return self.tracker.config

    def settings(self) -> dict:
        """The preset's record (name, propagation constants, size override, input rule): what decides the
        scores, so a resumed run must match it; the batch size does not and may change."""
        return self.tracker.preset.record()

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

    def propagate_mask(self, frame_paths: list[Path], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        """Masks [H, W] of frames 1.. from the id map [H, W] of frame 0 (original resolution in and out)."""
        for index, mask in self._counted(self.tracker.masks(frame_paths, first_mask), frame_paths):
            if index > 0:
                yield mask

    def propagate_keypoints(
        self, frame_paths: list[Path], first_points: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """([J, 2] pixels, [J] visible) of frames 1.. from the [J, 2] (x, y) pixels of frame 0."""
        for _, xy, visible in self._counted(self.tracker.keypoints(frame_paths, first_points), frame_paths):
            yield xy, visible
