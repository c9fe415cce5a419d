"""DAVIS semi-supervised video object segmentation: the data set layout, scoring a results folder, running a model.

Layout (as downloaded from davischallenge.org)::

    <root>/JPEGImages/480p/<sequence>/00000.jpg ...
    <root>/Annotations/480p/<sequence>/00000.png ...     one per frame
    <root>/ImageSets/<year>/<split>.txt                   one sequence name per line

DAVIS-2017 annotations are indexed PNGs, one id per object (255 is void and, as in the official code, counts as
background). DAVIS-2016 has one object per sequence: any nonzero pixel is the object, in the ground truth and in
the predictions alike (so DAVIS-2016 masks with values {0, 255} and the DAVIS-2017 split of an object into
several ids both score as one object). Predictions follow the official results layout:
``<results>/<sequence>/<frame>.png``, indexed, one per ground-truth frame; the first and last frames are not
scored and may be missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from siammae.errors import InputError
from siammae.evaluation.layout import annotated_frames, read_names
from siammae.evaluation.metrics.davis import GLOBAL_COLUMNS, SequenceScores, evaluate_sequence, global_results
from siammae.evaluation.png import read_index_png
from siammae.evaluation.results import ResultsDir

if TYPE_CHECKING:  # the model side (torch, propagation) is not needed to score existing predictions
    from siammae.evaluation.runner import Runner

YEARS = ("2016", "2017")
RESOLUTION = "480p"


@dataclass(frozen=True)
class DavisSequence:
    """One sequence: its frames (JPEG) and their annotations (PNG), same stems, sorted."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path, ...]

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self.frames]


def read_annotation(path: Path, year: str) -> np.ndarray:
    """Ground-truth ids [H, W]: 2016 -> {0, 1} (nonzero is the object); 2017 -> ids with void 255 as 0."""
    ids = read_index_png(path)
    if year == "2016":
        return (ids > 0).astype(np.uint8)
    return np.where(ids == 255, 0, ids).astype(np.uint8)


def list_sequences(root: str | Path, year: str, split: str) -> list[str]:
    """The sequence names of ``ImageSets/<year>/<split>.txt``."""
    if year not in YEARS:
        raise InputError(f"DAVIS year {year!r} is not one of {', '.join(YEARS)}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"DAVIS root {root} is not a folder")
    listing = root / "ImageSets" / year / f"{split}.txt"
    found = sorted(p.stem for p in (root / "ImageSets" / year).glob("*.txt")) if not listing.is_file() else []
    return read_names(listing, "DAVIS split list", f" (found: {', '.join(found)})" if found else "")


def load_sequence(root: str | Path, name: str) -> DavisSequence:
    """The frames and annotations of one sequence; every frame must have its annotation."""
    root = Path(root)
    frames, annotations = annotated_frames(
        root / "JPEGImages" / RESOLUTION / name, root / "Annotations" / RESOLUTION / name, f"DAVIS sequence {name}"
    )
    return DavisSequence(name, frames, annotations)


def num_objects(seq: DavisSequence, year: str) -> int:
    """Objects scored in a sequence: the largest id of the first annotation (1 for DAVIS-2016)."""
    return int(read_annotation(seq.annotations[0], year).max())


def score_predictions(seq: DavisSequence, pred_dir: Path, year: str) -> SequenceScores:
    """J and F per object for the frames of ``seq`` except the first and the last, from ``pred_dir``."""
    n = num_objects(seq, year)
    if n == 0:  # nothing to score: an empty table would read back as J = [] and fail far from its cause
        raise InputError(
            f"DAVIS sequence {seq.name}: first annotation {seq.annotations[0]} marks no object (DAVIS-{year} ids)"
        )
    frames, gts, preds = [], [], []
    for frame, annotation in zip(seq.frames[1:-1], seq.annotations[1:-1], strict=True):
        gt = read_annotation(annotation, year)
        path = pred_dir / f"{frame.stem}.png"
        if not path.is_file():
            raise InputError(f"DAVIS sequence {seq.name}: prediction {path} is missing (one PNG per frame)")
        pred = read_index_png(path)
        if pred.shape != gt.shape:
            raise InputError(
                f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                f"{gt.shape[1]}x{gt.shape[0]}"
            )
        if year == "2016":
            pred = (pred > 0).astype(np.uint8)
        elif pred.max() > n:
            raise InputError(
                f"prediction {path} holds object id {int(pred.max())} but the ground truth of {seq.name} has ids 1..{n}"
            )
        frames.append(frame.stem)
        gts.append(gt)
        preds.append(pred)
    if not frames:
        return SequenceScores(seq.name, [], np.zeros((n, 0)), np.zeros((n, 0)))
    return evaluate_sequence(seq.name, frames, np.stack(gts), np.stack(preds), n)


def scores_to_record(scores: SequenceScores) -> dict:
    return {"name": scores.name, "frames": scores.frames, "J": scores.J.tolist(), "F": scores.F.tolist()}


def scores_from_record(record: dict) -> SequenceScores:
    J = np.asarray(record["J"], dtype=np.float64).reshape(len(record["J"]), -1)
    F = np.asarray(record["F"], dtype=np.float64).reshape(len(record["F"]), -1)
    return SequenceScores(record["name"], list(record["frames"]), J, F)


def write_tables(results: ResultsDir, split: str, title: str, all_scores: list[SequenceScores]) -> dict:
    """Per-object CSV rows (``<sequence>_<id>``, as the official per-sequence table) and the global table."""
    rows = []
    for scores in all_scores:
        for obj, stats in enumerate(scores.object_statistics(), start=1):
            rows.append({"Sequence": f"{scores.name}_{obj}", **stats})
    table = global_results(all_scores)
    assert tuple(table) == GLOBAL_COLUMNS
    return results.write_tables(split, title, rows, table)


def evaluate_results(
    root: str | Path,
    results_dir: str | Path,
    year: str = "2017",
    split: str = "val",
    out: str | Path | None = None,
    sequences: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Score existing predictions (official results layout) against the ground truth, like the official tool.

    Writes the tables to ``out`` (default: ``results_dir``, as davis2017-evaluation does) and returns the JSON
    document: ``doc["global"]`` is the global table in the official column order.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(f"results folder {results_dir} does not exist")
    names = sequences or list_sequences(root, year, split)
    settings = {"benchmark": "davis", "year": year, "split": split, "results": str(results_dir)}
    results = ResultsDir(out or results_dir, settings, cache=False)

    def score(name: str) -> dict:
        pred_dir = results_dir / name
        if not pred_dir.is_dir():
            raise InputError(f"results folder {results_dir} has no predictions for sequence {name} ({pred_dir})")
        return scores_to_record(score_predictions(load_sequence(root, name), pred_dir, year))

    records = results.collect(names, score, progress)
    return write_tables(results, split, f"DAVIS-{year} {split}", [scores_from_record(r) for r in records])


def evaluate_model(
    runner: Runner,
    root: str | Path,
    out: str | Path,
    year: str = "2017",
    split: str = "val",
    sequences: list[str] | None = None,
    max_frames: int | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Propagate the first mask of every sequence, write the masks to ``out/predictions`` and score them.

    Resumable: sequences already scored in ``out`` (same settings) are read back. ``max_frames`` keeps the
    first frames of each sequence only (quick checks; not the benchmark). ``settings``: extra entries for the
    results' settings (e.g. the checkpoint and its sha256). Returns the JSON document of the results.
    """
    names = sequences or list_sequences(root, year, split)
    settings = runner.run_settings("davis", root, max_frames, settings, year=year, split=split)
    results = ResultsDir(out, settings, overwrite=overwrite)

    def run(name: str) -> dict:
        seq = load_sequence(root, name)
        if max_frames is not None:
            seq = dataclasses.replace(seq, frames=seq.frames[:max_frames], annotations=seq.annotations[:max_frames])
        pred_dir = results.prediction_dir(name)
        first = read_annotation(seq.annotations[0], year)
        runner.write_masks(pred_dir, list(seq.frames), first)
        return scores_to_record(score_predictions(seq, pred_dir, year))

    records = results.collect(names, run, progress)
    return write_tables(results, split, f"DAVIS-{year} {split}", [scores_from_record(r) for r in records])
