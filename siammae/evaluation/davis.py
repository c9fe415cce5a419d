"""DAVIS semi-supervised video object segmentation: the data set layout, scoring a results folder, running a model.

Layout (as downloaded from davischallenge.org)::

    <root>/JPEGImages/480p/<sequence>/00000.jpg ...
    <root>/Annotations/480p/<sequence>/00000.png ...     one per frame
    <root>/ImageSets/<year>/<split>.txt                   one sequence name per line

DAVIS-2017 annotations are indexed PNGs, one id per object (255 is void and, as in the official code, counts as
background). DAVIS-2016 has one object per sequence: any nonzero pixel is the object, in the ground truth and in
the predictions alike (so DAVIS-2016 masks with values {0, 255} and the DAVIS-2017 split of an object into
several ids both score as one object). The year, when not given, is detected from the folder (:func:`detect_year`).
Predictions follow the official results layout: ``<results>/<sequence>/<frame>.png``, indexed, one per ground-truth
frame; the first and last frames are not scored and may be missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from siammae.data.images import open_image
from siammae.errors import InputError
from siammae.evaluation.layout import annotated_frames, read_names
from siammae.evaluation.metrics.davis import GLOBAL_COLUMNS, SequenceScores, evaluate_sequence, global_results
from siammae.evaluation.png import read_index_png
from siammae.evaluation.protocol import Benchmark
from siammae.evaluation.results import EvalResult, ResultsDir
from siammae.output_folder import check_name

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
    release_2016 = root / "ImageSets" / RESOLUTION / f"{split}.txt"
    if year == "2016" and not listing.is_file() and release_2016.is_file():
        return _release_2016_names(release_2016)
    found = sorted(p.stem for p in (root / "ImageSets" / year).glob("*.txt")) if not listing.is_file() else []
    return read_names(listing, "DAVIS split list", f" (found: {', '.join(found)})" if found else "")


def _release_2016_names(listing: Path) -> list[str]:
    """The sequences of a DAVIS-2016 release list (``ImageSets/480p/val.txt``: one line per frame,
    ``/JPEGImages/480p/<sequence>/00000.jpg /Annotations/480p/<sequence>/00000.png``), in order of appearance."""
    names: dict[str, None] = {}
    for number, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        path = Path(parts[0])
        if len(path.parts) < 3 or path.parts[-3] != RESOLUTION:
            raise InputError(f"{listing}: line {number} {line!r} is not '/JPEGImages/480p/<sequence>/<frame>.jpg ...'")
        names.setdefault(path.parts[-2])
    if not names:
        raise InputError(f"DAVIS split list {listing} is empty")
    return [check_name(n, f"DAVIS split list {listing}") for n in names]


def detect_year(root: str | Path) -> tuple[str, str | None]:
    """(year, why) for a DAVIS folder given without ``--year``; ``why`` is None when the folder holds neither
    annotations nor lists (2017 then, the paper's table).

    The DAVIS-2016 release has one object per sequence in mode L annotations with values {0, 255}; DAVIS-2017
    (which also ships ``ImageSets/2016`` for the 2016 protocol) has indexed (mode P) annotations, one id per object,
    and ``ImageSets/2017``. Read as DAVIS-2017, a {0, 255} mask has no object at all (255 is void), so the
    annotations decide first, then the list folders; a folder with neither is taken as 2017 (the paper's table).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"DAVIS root {root} is not a folder")
    sets = root / "ImageSets"
    first = _first_annotation(root)
    if first is not None:
        with open_image(first, InputError) as im:
            mode = im.mode
            values = set(np.unique(np.asarray(im))) if mode == "L" else None
        if mode == "L" and values <= {0, 255}:
            return "2016", f"{first} is a mode L mask with values {{0, 255}} (the DAVIS-2016 release)"
    if (sets / "2017").is_dir():
        return "2017", f"{sets / '2017'} exists" + (f" and {first} is mode {mode}" if first is not None else "")
    if (sets / "2016").is_dir() or (sets / RESOLUTION).is_dir():
        return "2016", f"{sets} holds DAVIS-2016 lists only"
    return "2017", None  # nothing to go on: the list error that follows says what is missing


def _first_annotation(root: Path) -> Path | None:
    """The first annotation PNG of the first sequence folder (by name), or None."""
    folder = root / "Annotations" / RESOLUTION
    if not folder.is_dir():
        return None
    for seq in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pngs = sorted(seq.glob("*.png"))
        if pngs:
            return pngs[0]
    return None


def load_sequence(root: str | Path, name: str) -> DavisSequence:
    """The frames and annotations of one sequence; every frame must have its annotation."""
    root = Path(root)
    frames, annotations = annotated_frames(
        root / "JPEGImages" / RESOLUTION / name, root / "Annotations" / RESOLUTION / name, f"DAVIS sequence {name}"
    )
    return DavisSequence(name, frames, annotations)


def score_predictions(seq: DavisSequence, pred_dir: Path, year: str) -> SequenceScores:
    """J and F per object for the frames of ``seq`` except the first and the last, from ``pred_dir``."""
    first = read_annotation(seq.annotations[0], year)
    _check_first(seq, first, year)  # nothing to score: an empty table would read back as J = [] far from its cause
    n = int(first.max())
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


@dataclass(frozen=True)
class Davis(Benchmark):
    """DAVIS at ``year`` ("2016" | "2017") and ``split`` (``ImageSets/<year>/<split>.txt``)."""

    year: str = "2017"
    split: str = "val"
    name: ClassVar[str] = "davis"

    def __post_init__(self):
        if self.year not in YEARS:
            raise InputError(f"DAVIS year {self.year!r} is not one of {', '.join(YEARS)}")

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"DAVIS-{self.year}"

    def names(self, root) -> list[str]:
        return list_sequences(root, self.year, self.split)

    def score(self, root: Path, name: str, results_dir: Path) -> dict:
        pred_dir = results_dir / name
        if not pred_dir.is_dir():
            raise InputError(f"results folder {results_dir} has no predictions for sequence {name} ({pred_dir})")
        return scores_to_record(score_predictions(load_sequence(root, name), pred_dir, self.year))

    def predict(self, runner: Runner, root: Path, name: str, results: ResultsDir, max_frames: int | None) -> dict:
        seq = load_sequence(root, name)
        if max_frames is not None:
            seq = dataclasses.replace(seq, frames=seq.frames[:max_frames], annotations=seq.annotations[:max_frames])
        first = read_annotation(seq.annotations[0], self.year)
        _check_first(seq, first, self.year)
        pred_dir = results.prediction_dir(name)
        runner.write_masks(pred_dir, list(seq.frames), first)
        return scores_to_record(score_predictions(seq, pred_dir, self.year))

    def tables(self, results: ResultsDir, records: list[dict]) -> EvalResult:
        """Per-object CSV rows (``<sequence>_<id>``, as the official per-sequence table) and the global table."""
        rows = []
        all_scores = [scores_from_record(r) for r in records]
        for scores in all_scores:
            for obj, stats in enumerate(scores.object_statistics(), start=1):
                rows.append({"Sequence": f"{scores.name}_{obj}", **stats})
        table = global_results(all_scores)
        assert tuple(table) == GLOBAL_COLUMNS
        return results.write_tables(self.split, self.title, rows, table)


def _check_first(seq: DavisSequence, first: np.ndarray, year: str) -> None:
    """The first annotation must mark an object under ``year``'s ids; a {0, 255} mask read as DAVIS-2017 marks none."""
    if first.any():
        return
    path = seq.annotations[0]
    with open_image(path, InputError) as im:
        mode, values = im.mode, sorted(int(v) for v in np.unique(np.asarray(im)))
    hint = (
        f"; it holds values {values} (mode {mode}), a DAVIS-2016 mask: pass --year 2016"
        if year == "2017" and 255 in values
        else ""
    )
    raise InputError(
        f"{path}: the first annotation of DAVIS sequence {seq.name} marks no object (DAVIS-{year} ids){hint}"
    )
