"""The videos of a batch: :class:`BatchItem`, read from a manifest (:func:`read_manifest`) or the command line
(:func:`expand_inputs`), and checked (:func:`check_items`) before anything heavy is imported.

Names are data, not paths: each video's output folder name (its ``out``, else its stem) must be a plain folder name
(no ``/``, ``..``, leading ``.``), must not be one of the batch's own files (``summary.json``, ``summary.md``), and
must hold no control character (a newline, a NUL, ...) and no ``|`` (a column of ``summary.md``): such a name is
rejected up front, naming the row, never silently changed. Paths in a manifest may not hold a NUL either.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from siammae.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from siammae.errors import InputError, OutputError
from siammae.io import parse_json
from siammae.output_folder import LOCK_NAME, check_folder_free

MANIFEST_COLUMNS = ("video", "mask", "mask_dir", "keypoints", "out")
SUMMARY_FILES = ("summary.json", "summary.md")
# what the batch itself writes at the top of --out: no video may be named like it
RESERVED_NAMES = (*SUMMARY_FILES, LOCK_NAME)
# what a batch writes in a video's folder: a folder holding anything else is not replaced or removed
VIDEO_FILES = ("masks", "keypoints.json", "keypoints.jsonl", "report.json", "report.md", "overlay.mp4")


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch: ``video`` (file or frame folder) with ``mask`` (frame 0) and / or ``mask_dir`` (masks
    by frame name), or ``keypoints`` (a keypoint JSON); ``out`` the name of its output folder (default: its stem)."""

    video: str
    mask: str | None = None
    mask_dir: str | None = None
    keypoints: str | None = None
    out: str | None = None

    @property
    def name(self) -> str:
        return self.out or Path(self.video).stem


def _rows_jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}: line {n}")
        for k, v in row.items():
            if v is not None and not isinstance(v, str):
                raise InputError(f"{path}: line {n}: {k!r} must be a string (a path or a name), got {type(v).__name__}")
        rows.append(row)
    return rows


def _rows_csv(path: Path, text: str) -> list[dict]:
    try:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV manifest needs a header row with a 'video' column")
        return list(reader)
    except csv.Error as e:
        raise InputError(f"{path}: not a CSV manifest ({e})") from e


def _read_rows(path: Path) -> list[dict]:
    """The manifest's rows as read: JSON Lines by its suffix (``.jsonl`` / ``.ndjson``), CSV otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the manifest ({e})") from e
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _rows_jsonl(path, text)
    return _rows_csv(path, text)


def _row_item(path: Path, n: int, row: dict) -> BatchItem:
    """Row ``n`` of the manifest ``path`` as a BatchItem: known columns only, a video, no NUL in a path; the paths
    made relative to the manifest's folder."""
    unknown = sorted(str(k) for k in set(row) - set(MANIFEST_COLUMNS))
    if unknown:
        raise InputError(f"{path}: row {n} has unknown columns {unknown} (columns: {', '.join(MANIFEST_COLUMNS)})")
    vals = {k: (str(v).strip() or None) if v is not None else None for k, v in row.items()}
    if not vals.get("video"):
        raise InputError(f"{path}: row {n} has no video")
    for k in ("video", "mask", "mask_dir", "keypoints"):
        if vals.get(k):
            if "\0" in vals[k]:
                raise InputError(f"{path}: row {n}: {k} {vals[k]!r} holds a NUL character")
            vals[k] = str(path.parent / vals[k])
    return BatchItem(**vals)


def read_manifest(path: str | os.PathLike) -> list[BatchItem]:
    """A manifest: CSV with a header row, or JSON Lines (``.jsonl``; one object per line); columns ``video`` and
    one of ``mask`` / ``mask_dir`` / ``keypoints``, optional ``out``. Relative paths are relative to the manifest."""
    path = Path(path)
    items = [_row_item(path, n, row) for n, row in enumerate(_read_rows(path), 1)]
    if not items:
        raise InputError(f"{path}: the manifest lists no videos")
    return check_items(items, source=str(path))


def expand_inputs(inputs: Iterable[str | os.PathLike], mask_root=None, keypoints_root=None) -> list[BatchItem]:
    """Videos from the command line: video files, frame folders, and folders of videos / frame folders (a folder
    holding images is one video). Masks come from ``mask_root/<stem>/`` (one folder of masks per video, named by
    frame, the DAVIS ``Annotations`` layout); keypoints from ``keypoints_root/<stem>.json``."""
    videos: list[Path] = []
    for given in inputs:
        p = Path(given)
        if p.is_dir() and not _has_images(p):
            found = sorted(c for c in p.iterdir() if not c.name.startswith(".") and _is_video(c))
            if not found:
                raise InputError(f"{p}: the folder holds no videos or frame folders")
            videos += found
        else:
            videos.append(p)
    items = []
    for v in videos:
        if keypoints_root is not None:
            items.append(BatchItem(str(v), keypoints=str(Path(keypoints_root) / f"{v.stem}.json")))
        elif mask_root is not None:
            items.append(BatchItem(str(v), mask_dir=str(Path(mask_root) / v.stem)))
        else:
            raise InputError("several videos need one mask folder each: give --mask-dir ROOT (ROOT/<video name>/) "
                             "or --keypoints ROOT (ROOT/<video name>.json), or a --manifest")  # fmt: skip
    return check_items(items, source="the inputs")


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a video's output folder, or None when it can (see the module docstring)."""
    if name in ("", ".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "is not a plain folder name"
    if name.startswith("."):
        return "starts with '.' (hidden names are the batch's work folders)"
    if name in RESERVED_NAMES:
        return f"is a file the batch writes itself ({', '.join(RESERVED_NAMES[:2])})"
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "|" in name:
        return "holds a control character (newline, tab, NUL) or '|'; give the row an 'out' name"
    return None


def check_items(items: list[BatchItem], source: str) -> list[BatchItem]:
    """Every item names what to track, and a usable output folder name that no other item writes."""
    seen: dict[str, str] = {}
    for it in items:
        if it.keypoints is not None and (it.mask is not None or it.mask_dir is not None):
            raise InputError(f"{source}: {it.video} has both keypoints and masks; give one")
        if it.keypoints is None and it.mask is None and it.mask_dir is None:
            raise InputError(f"{source}: {it.video} has no mask, mask_dir or keypoints")
        for k in ("video", "mask", "mask_dir", "keypoints"):
            if "\0" in (getattr(it, k) or ""):
                raise InputError(f"{source}: {k} {getattr(it, k)!r} holds a NUL character")
        name = it.name
        problem = check_name(name)
        if problem is not None:
            raise InputError(f"{source}: output name {name!r} of {it.video!r} {problem}")
        if name in seen:
            raise InputError(f"{source}: {seen[name]} and {it.video} would both write {name}/ (give 'out' names)")
        seen[name] = it.video
    return items


def _is_video_folder(path: Path) -> bool:
    """A folder a batch wrote for one video: report.json and nothing but :data:`VIDEO_FILES`."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = {e.name for e in path.iterdir()}
    return "report.json" in names and names <= set(VIDEO_FILES)


def check_batch_folder(root: Path, items: list[BatchItem], overwrite: bool) -> list[Path]:
    """Whether a batch of ``items`` may write ``root`` (``--out``); the entries ``overwrite`` removes (other video
    folders of an earlier batch). Errors, before anything is written: ``root`` not a folder; a symbolic link at its
    top (``<name>``, ``.<name>.partial``: never followed); a video's folder holding a file a batch does not write;
    with ``overwrite``, any other entry a batch does not write. (The claim, :func:`siammae.tracking.batch.
    claim_batch_folder`, asks again under the lock, and refuses links anywhere inside.)"""
    root = Path(root)
    check_folder_free(root, overwrite, exclusive=False)  # not a link, not a file
    if not root.exists():
        return []
    entries = sorted(root.iterdir())
    for e in entries:
        if e.is_symlink():
            raise OutputError(f"{e}: is a symbolic link inside --out {root}; siammae never writes through a link it "
                              "did not create: remove it or choose another folder")  # fmt: skip
    names = {it.name for it in items}
    for name in sorted(names):
        path = root / name
        if path.exists() and not _is_video_folder(path):
            what = "is not a folder" if not path.is_dir() else "holds files a batch does not write"
            raise OutputError(f"--out {root}: {path} {what}; move it away or give the video another 'out' name")
    if not overwrite:
        return []
    mine = names | {f".{n}.partial" for n in names} | {f".{n}.old" for n in names} | set(RESERVED_NAMES)
    stale = [e for e in entries if e.name not in mine and not e.name.startswith(".siammae-tmp.")]
    foreign = [e.name for e in stale if not (_is_video_folder(e) or e.name.endswith((".partial", ".old")))]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise OutputError(f"--out {root}: holds {shown}, which this batch does not write; --overwrite only "
                          "replaces a batch's own outputs: move them away or choose another folder")  # fmt: skip
    return stale


def is_batch_input(inputs: list[str]) -> bool:
    """Whether command-line inputs name several videos: more than one, or one folder of videos (not of frames)."""
    if len(inputs) != 1:
        return len(inputs) > 1
    p = Path(inputs[0])
    return p.is_dir() and not _has_images(p)


def _has_images(folder: Path) -> bool:
    return any(c.suffix.lower() in IMAGE_EXTENSIONS for c in folder.iterdir())


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS if p.is_file() else p.is_dir() and _has_images(p)
