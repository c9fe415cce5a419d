"""JHMDB pose propagation: the data set layout, scoring keypoint predictions, running a model.

Layout (as downloaded from jhmdb.is.tue.mpg.de)::

    <root>/Rename_Images/<action>/<video>/00001.png ...            320x240 frames
    <root>/joint_positions/<action>/<video>/joint_positions.mat   ``pos_img``: 2 x 15 x T, 1-based pixels
    <root>/splits/<action>_test_split<N>.txt                      "<video>.avi 1|2"; 2 marks a test video

The test videos of split 1 (268 videos) are the benchmark of CRW and its successors. The 15 joints of the first
frame propagate as Gaussian heatmaps (:mod:`siammae.data.keypoints`); PCK scores frames 1..
(:mod:`siammae.evaluation.metrics.jhmdb`).
Predictions: ``<results>/<action>/<video>.json`` in the keypoint-track schema of :mod:`siammae.data.keypoints`, one
entry per frame, ``null`` for a joint that vanished.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from siammae.data.images import open_image
from siammae.data.keypoints import write_keypoint_track
from siammae.errors import InputError
from siammae.evaluation.metrics.jhmdb import JOINT_NAMES, PCK_THRESHOLDS, normalized_distances, pck
from siammae.evaluation.protocol import Benchmark
from siammae.evaluation.results import EvalResult, ResultsDir
from siammae.io import read_json, read_text
from siammae.output_folder import check_name

if TYPE_CHECKING:
    from siammae.evaluation.runner import Runner


@dataclass(frozen=True)
class JhmdbVideo:
    """One video: ``name`` = "<action>/<video>", its frames and ``joints`` [T, 15, 2] 0-based (x, y) pixels."""

    name: str
    frames: tuple[Path, ...]
    joints: np.ndarray


def list_videos(root: str | Path, split: int = 1) -> list[str]:
    """The test videos ("<action>/<video>") of ``splits/*_test_split<split>.txt``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"JHMDB root {root} is not a folder")
    files = sorted((root / "splits").glob(f"*_test_split{split}.txt"))
    if not files:
        raise InputError(f"JHMDB split files {root / 'splits'}/<action>_test_split{split}.txt do not exist")
    names = []
    for path in files:
        action = path.name[: -len(f"_test_split{split}.txt")]
        for line in read_text(path, "JHMDB split file").splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "2"):
                if parts:
                    raise InputError(f"{path}: line {line!r} is not '<video>.avi 1|2'")
                continue
            if parts[1] == "2":  # "<action>/<video>": both parts plain names (they are joined to output paths)
                names.append(f"{check_name(action, str(path))}/{check_name(Path(parts[0]).stem, str(path))}")
    if not names:
        raise InputError(f"JHMDB split {split} lists no test video (label 2) in {root / 'splits'}")
    return names


def load_video(root: str | Path, name: str) -> JhmdbVideo:
    root = Path(root)
    image_dir = root / "Rename_Images" / name
    frames = tuple(sorted(image_dir.glob("*.png")))
    if not frames:
        raise InputError(f"JHMDB video {name}: no frames (*.png) in {image_dir}")
    mat = root / "joint_positions" / name / "joint_positions.mat"
    if not mat.is_file():
        raise InputError(f"JHMDB video {name}: joint file {mat} does not exist")
    try:
        import scipy.io  # deferred, as scipy.ndimage in the DAVIS metrics

        pos = scipy.io.loadmat(str(mat))["pos_img"]
    except KeyError:
        raise InputError(f"{mat} has no 'pos_img' entry") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{mat} cannot be read ({err})") from None
    if pos.ndim != 3 or pos.shape[:2] != (2, len(JOINT_NAMES)):
        raise InputError(f"{mat}: pos_img is {pos.shape}, expected 2 x {len(JOINT_NAMES)} x T")
    if pos.shape[2] != len(frames):
        raise InputError(
            f"JHMDB video {name}: {mat} has {pos.shape[2]} frames of joints, {image_dir} has {len(frames)}"
        )
    joints = np.transpose(pos, (2, 1, 0)).astype(np.float64) - 1.0  # [T, 15, 2], 0-based (CRW: pos_img - 1)
    return JhmdbVideo(name, frames, joints)


def read_prediction(path: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """([T, 15, 2] pixels, [T, 15] visible) from a keypoint-track JSON file."""
    if not path.is_file():
        raise InputError(f"prediction {path} is missing (one keypoint-track JSON per video)")
    frames = read_json(path, keys={"frames": list}, what="prediction")["frames"]
    if len(frames) != num_frames:
        raise InputError(f"prediction {path} has {len(frames)} frames, the video has {num_frames}")
    xy = np.full((num_frames, len(JOINT_NAMES), 2), np.nan)
    for t, frame in enumerate(frames):
        points = frame.get("keypoints") if isinstance(frame, dict) else None
        if not isinstance(points, list) or len(points) != len(JOINT_NAMES):
            raise InputError(f"prediction {path}: frame {t} needs {len(JOINT_NAMES)} keypoints ([x, y] or null)")
        for j, p in enumerate(points):
            if p is None:
                continue
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)):
                raise InputError(f"prediction {path}: frame {t} keypoint {j} is {json.dumps(p)}, not [x, y] or null")
            xy[t, j] = p
    return xy, ~np.isnan(xy[..., 0])


def score_prediction(video: JhmdbVideo, pred: np.ndarray, visible: np.ndarray) -> dict:
    dist = normalized_distances(pred, video.joints, visible)  # [T-1, 15]
    return {"name": video.name, "frames": len(video.frames), "distances": dist.tolist()}


@dataclass(frozen=True)
class Jhmdb(Benchmark):
    """JHMDB at ``split`` 1, 2 or 3 (the test videos of ``splits/*_test_split<split>.txt``)."""

    split: int = 1
    name: ClassVar[str] = "jhmdb"
    label: ClassVar[str] = "JHMDB"

    def __post_init__(self):
        if str(self.split) not in ("1", "2", "3"):
            raise InputError(f"JHMDB split {self.split!r} is not 1, 2 or 3")
        object.__setattr__(self, "split", int(self.split))

    @property
    def title(self) -> str:
        return f"JHMDB split {self.split}{self.subset_text}"

    def names(self, root) -> list[str]:
        return list_videos(root, self.split)

    def score(self, root: Path, name: str, results_dir: Path) -> dict:
        video = load_video(root, name)
        return score_prediction(video, *read_prediction(results_dir / f"{name}.json", len(video.frames)))

    def predict(self, runner: Runner, root: Path, name: str, results: ResultsDir, max_frames: int | None) -> dict:
        video = load_video(root, name)
        if max_frames is not None:
            video = dataclasses.replace(video, frames=video.frames[:max_frames], joints=video.joints[:max_frames])
        pred = [video.joints[0]]
        for xy, _ in runner.propagate_keypoints(list(video.frames), video.joints[0]):
            pred.append(xy)
        pred = np.stack(pred)  # [T, 15, 2], NaN where a joint vanished
        with open_image(video.frames[0], InputError) as im:
            size = (im.height, im.width)
        track = [(p.stem, xy) for p, xy in zip(video.frames, pred, strict=True)]
        path = results.root / "predictions" / f"{name}.json"
        write_keypoint_track(path, JOINT_NAMES, track, size)
        return score_prediction(video, *read_prediction(path, len(video.frames)))

    def tables(self, results: ResultsDir, records: list[dict]) -> EvalResult:
        rows, all_dist = [], []
        for record in records:
            dist = np.array(record["distances"], dtype=np.float64).reshape(-1, len(JOINT_NAMES))  # None -> NaN
            all_dist.append(dist)
            scores = pck(dist) if np.any(~np.isnan(dist)) else dict.fromkeys(PCK_THRESHOLDS, float("nan"))
            rows.append({"Sequence": record["name"], **{f"PCK@{a}": v for a, v in scores.items()}})
        table = {f"PCK@{a}": v for a, v in pck(np.concatenate(all_dist)).items()}
        return results.write_tables(f"split{self.split}", self.title, rows, table)
