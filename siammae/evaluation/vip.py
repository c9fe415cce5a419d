"""VIP human-part propagation: the data set layout, scoring a results folder, running a model.

Layout (VIP_Fine, as CRW reads it)::

    <root>/Images/<video>/<frame>.jpg
    <root>/Annotations/Category_ids/<video>/<frame>.png     class ids 0..19, one per frame
    <root>/lists/<split>_videos.txt                         one video name per line (e.g. "videos100")

The 20 part classes of the first frame propagate to the others. As CRW's ``eval_vip.py``, every frame with a
prediction counts, the first included (its prediction is its given annotation); predictions are resized to the
ground truth by nearest neighbour; one confusion matrix accumulates all frames of all videos.
Predictions: ``<results>/<video>/<frame>.png``, class ids as pixel values (indexed or greyscale PNG).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from siammae.errors import InputError
from siammae.evaluation.layout import annotated_frames, read_names
from siammae.evaluation.metrics.vip import NUM_CLASSES, confusion_matrix, mean_iou, per_class_iou, pixel_accuracy
from siammae.evaluation.png import read_index_png
from siammae.evaluation.protocol import Benchmark
from siammae.evaluation.results import EvalResult, ResultsDir

if TYPE_CHECKING:
    from siammae.evaluation.runner import Runner

CLASSES = (
    "background",
    "hat",
    "hair",
    "sun-glasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "gloves",
    "scarf",
    "skirt",
    "torso-skin",
    "face",
    "right-arm",
    "left-arm",
    "right-leg",
    "left-leg",
    "right-shoe",
    "left-shoe",
)


@dataclass(frozen=True)
class VipVideo:
    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]


def list_videos(root: str | Path, split: str = "val") -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"VIP root {root} is not a folder")
    return read_names(root / "lists" / f"{split}_videos.txt", "VIP video list", " (one video name per line)")


def load_video(root: str | Path, name: str) -> VipVideo:
    root = Path(root)
    frames, annotations = annotated_frames(
        root / "Images" / name, root / "Annotations" / "Category_ids" / name, f"VIP video {name}"
    )
    return VipVideo(name, frames, annotations)


def read_prediction(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Class ids [H, W] of a prediction PNG, resized by nearest neighbour to the ground truth's ``shape``."""
    if not path.is_file():
        raise InputError(f"prediction {path} is missing (one PNG per annotated frame)")
    pred = read_index_png(path)
    if pred.shape != shape:
        pred = np.asarray(Image.fromarray(pred).resize((shape[1], shape[0]), Image.NEAREST))
    if pred.max() >= NUM_CLASSES:
        raise InputError(f"prediction {path} holds class {int(pred.max())}; VIP classes are 0..{NUM_CLASSES - 1}")
    return pred


def score_predictions(video: VipVideo, pred_dir: Path) -> dict:
    """The record of one video: its [20, 20] confusion matrix over every frame and its own mIoU."""
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for frame, annotation in zip(video.frames, video.annotations, strict=True):
        gt = read_index_png(annotation)
        hist += confusion_matrix(gt, read_prediction(pred_dir / f"{frame.stem}.png", gt.shape))
    return {"name": video.name, "frames": len(video.frames), "hist": hist.tolist()}


@dataclass(frozen=True)
class Vip(Benchmark):
    """VIP at ``split`` (``lists/<split>_videos.txt``)."""

    split: str = "val"
    name: ClassVar[str] = "vip"
    label: ClassVar[str] = "VIP"

    def names(self, root) -> list[str]:
        return list_videos(root, self.split)

    def score(self, root: Path, name: str, results_dir: Path) -> dict:
        return score_predictions(load_video(root, name), results_dir / name)

    def predict(self, runner: Runner, root: Path, name: str, results: ResultsDir, max_frames: int | None) -> dict:
        video = load_video(root, name)
        if max_frames is not None:
            video = dataclasses.replace(
                video, frames=video.frames[:max_frames], annotations=video.annotations[:max_frames]
            )
        first = read_index_png(video.annotations[0])
        if first.max() >= NUM_CLASSES:
            raise InputError(
                f"{video.annotations[0]} holds class {int(first.max())}; VIP classes are 0..{NUM_CLASSES - 1}"
            )
        pred_dir = results.prediction_dir(name)
        runner.write_masks(pred_dir, list(video.frames), first)
        return score_predictions(video, pred_dir)

    def tables(self, results: ResultsDir, records: list[dict]) -> EvalResult:
        rows = []
        total = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        for record in records:
            hist = np.asarray(record["hist"], dtype=np.int64)
            total += hist
            rows.append({"Sequence": record["name"], "mIoU": mean_iou(hist), "Pixel-Acc": pixel_accuracy(hist)})
        per_class = {c: float(v) for c, v in zip(CLASSES, per_class_iou(total), strict=True)}  # NaN: absent
        table = {"mIoU": mean_iou(total), "Pixel-Acc": pixel_accuracy(total)}
        return results.write_tables(self.split, self.title, rows, table, extra={"per_class_iou": per_class})
