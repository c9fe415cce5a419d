"""Many videos in one resumable run: :func:`track_many` and its summary.

Each video gets a folder of its own under ``out`` (its ``out`` name, else its stem)::

    out/<name>/masks/00000.png ...     (or keypoints.json + keypoints.jsonl)
    out/<name>/report.json, report.md  (the run's report; "status": "complete" once finished)
    out/<name>/overlay.mp4             (with overlay=True)
    out/summary.json, summary.md       (write_summary: one row per video and the totals)

A video is tracked into a hidden ``out/.<name>.partial`` folder that replaces ``out/<name>`` only when its run has
ended (complete, failed or interrupted), so a folder is always one run's outputs, never a mix. A video whose report
says "complete" is skipped on the next run (``overwrite=True`` redoes it); any other is redone from the start. A
video that fails is recorded with its error (its report says "error") and the batch goes on.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from siammae.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, count_frames
from siammae.distributed import Rank, current_rank, finish, gather
from siammae.errors import InputError
from siammae.io import write_json, write_text
from siammae.tracking.pipeline import track_keypoints_video, track_video
from siammae.tracking.report import now_iso
from siammae.tracking.shard import shard
from siammae.tracking.tracker import Tracker

MANIFEST_COLUMNS = ("video", "mask", "mask_dir", "keypoints", "out")


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


@dataclass
class VideoResult:
    """What became of one video: status "complete" | "skipped" (finished by an earlier run) | "error" |
    "interrupted"; ``report`` its run report (None when it failed before the run started)."""

    item: BatchItem
    status: str
    folder: Path
    error: str | None = None
    report: dict | None = field(default=None, repr=False)

    def row(self) -> dict:
        """One line of the summary."""
        r = self.report or {}
        v, mem, t = r.get("video") or {}, r.get("memory") or {}, r.get("time") or {}
        return {
            "name": self.item.name,
            "video": self.item.video,
            "status": self.status,
            "error": self.error,
            "frames": r.get("frames", 0),
            "width": v.get("width"),
            "height": v.get("height"),
            "seconds": t.get("total_seconds"),
            "fps": r.get("fps"),
            "stage_fps": {s: x["fps"] for s, x in (t.get("stages") or {}).items()},
            "peak_host_mib": mem.get("peak_host_mib"),
            "peak_gpu_mib": mem.get("peak_gpu_mib"),
            "output": str(self.folder),
        }


# ----------------------------------------------------------------------------------------------- inputs
def read_manifest(path: str | os.PathLike) -> list[BatchItem]:
    """A manifest: CSV with a header row, or JSON Lines (``.jsonl``; one object per line); columns ``video`` and
    one of ``mask`` / ``mask_dir`` / ``keypoints``, optional ``out``. Relative paths are relative to the manifest."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the manifest ({e})") from e
    rows: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {n} is not JSON ({e.msg})") from e
                if not isinstance(row, dict):
                    raise InputError(f"{path}: line {n} is not a JSON object")
                rows.append(row)
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise InputError(f"{path}: a CSV manifest needs a header row with a 'video' column")
        rows = list(reader)
    base = path.parent
    items = []
    for n, row in enumerate(rows, 1):
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            raise InputError(f"{path}: row {n} has unknown columns {unknown} (columns: {', '.join(MANIFEST_COLUMNS)})")
        vals = {k: (str(v).strip() or None) if v is not None else None for k, v in row.items()}
        if not vals.get("video"):
            raise InputError(f"{path}: row {n} has no video")
        for k in ("video", "mask", "mask_dir", "keypoints"):
            if vals.get(k):
                vals[k] = str(base / vals[k])
        items.append(BatchItem(**vals))
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


def check_items(items: list[BatchItem], source: str) -> list[BatchItem]:
    """Every item names what to track, and no two write the same output folder."""
    seen: dict[str, str] = {}
    for it in items:
        if it.keypoints is not None and (it.mask is not None or it.mask_dir is not None):
            raise InputError(f"{source}: {it.video} has both keypoints and masks; give one")
        if it.keypoints is None and it.mask is None and it.mask_dir is None:
            raise InputError(f"{source}: {it.video} has no mask, mask_dir or keypoints")
        name = it.name
        if name in ("", ".", "..") or "/" in name or os.sep in name or name.startswith("."):
            raise InputError(f"{source}: output name {name!r} of {it.video} is not a plain folder name")
        if name in seen:
            raise InputError(f"{source}: {seen[name]} and {it.video} would both write {name}/ (give 'out' names)")
        seen[name] = it.video
    return items


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


def frame_count(item: BatchItem) -> int:
    """Frames of a video, for balancing shards (0 when it cannot be read: it will fail in its run)."""
    try:
        return count_frames(item.video)
    except (InputError, OSError):
        return 0


# ------------------------------------------------------------------------------------------------- runs
def track_many(
    tracker: Tracker,
    items: Iterable[BatchItem | dict],
    out: str | os.PathLike,
    *,
    overlay: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Iterator[VideoResult]:
    """Track every video of ``items`` (:class:`BatchItem` or dicts with its fields) with ``tracker``, one output
    folder each under ``out`` (see the module docstring); yield one :class:`VideoResult` per video, in order.

    A finished video (report status "complete") is skipped unless ``overwrite``; a failing one is recorded and the
    batch goes on. Ctrl-C ends the batch after recording the video it stopped in (KeyboardInterrupt is raised).
    """
    from tqdm import tqdm

    items = check_items([BatchItem(**i) if isinstance(i, dict) else i for i in items], source="track_many")
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{root}: cannot create the output folder ({e.strerror or e})") from e
    # HOOK: the output-folder guard of siammae.io (lock file, no-follow writes) goes here once it lands
    bar = tqdm(total=len(items), unit="video", desc="videos", disable=not progress, dynamic_ncols=True)
    try:
        for item in items:
            result = _track_one(tracker, item, root, overlay, overwrite, progress)
            bar.update(1)
            yield result
    finally:
        bar.close()


def _track_one(tracker, item: BatchItem, root: Path, overlay: bool, overwrite: bool, progress: bool) -> VideoResult:
    folder = root / item.name
    done = _read_report(folder / "report.json")
    if done is not None and done.get("status") == "complete" and not overwrite:
        return VideoResult(item, "skipped", folder, None, done)
    partial = root / f".{item.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that was killed
    partial.mkdir()
    outputs = {"report": partial / "report.json", "overlay": partial / "overlay.mp4" if overlay else None,
               "overwrite": True, "progress": progress}  # fmt: skip
    started = now_iso()
    try:
        if item.keypoints is not None:
            report = track_keypoints_video(tracker, item.video, item.keypoints, out=partial, **outputs)
        else:
            report = track_video(tracker, item.video, item.mask, mask_dir=item.mask_dir, out=partial / "masks",
                                 **outputs)  # fmt: skip
        result = VideoResult(item, "complete", folder, None, report)
    except KeyboardInterrupt:
        _replace(partial, folder, item, started, "interrupted", None)
        raise
    except Exception as e:  # noqa: BLE001 -- one bad video does not stop the batch; its error is recorded
        error = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
        report = _replace(partial, folder, item, started, "error", error)
        return VideoResult(item, "error", folder, error, report)
    _replace(partial, folder, item, started, "complete", None)
    return result


def _read_report(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _replace(partial: Path, folder: Path, item: BatchItem, started: str, status: str, error: str | None) -> dict:
    """Put the run's folder in place of ``folder``; a run that failed before its report gets a short one."""
    report = _read_report(partial / "report.json")
    if report is None:  # failed before the run started (unreadable video, bad mask)
        report = {"status": status, "error": error, "started": started, "frames": 0, "video": {"path": item.video}}
        write_json(partial / "report.json", report)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------------------------- summary
def summarise(results: Iterable[VideoResult], wall_seconds: float) -> dict:
    """The summary of a batch: one row per video and the totals (videos and frames per second over the wall time
    of the batch; the frames of skipped videos are not counted as work done)."""
    rows = [r.row() for r in results]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "skipped", "error", "interrupted")}
    frames = sum(r["frames"] or 0 for r in rows if r["status"] != "skipped")
    done = counts["complete"] + counts["error"] + counts["interrupted"]
    return {
        "videos": len(rows),
        **counts,
        "failed": counts["error"],
        "frames": frames,
        "wall_seconds": round(wall_seconds, 3),
        "videos_per_second": round(done / wall_seconds, 4) if wall_seconds > 0 else None,
        "frames_per_second": round(frames / wall_seconds, 2) if wall_seconds > 0 else None,
        "peak_host_mib": max((r["peak_host_mib"] or 0 for r in rows), default=None),
        "peak_gpu_mib": max((r["peak_gpu_mib"] or 0 for r in rows), default=None)
        if any(r["peak_gpu_mib"] for r in rows)
        else None,  # fmt: skip
        "rows": rows,
    }


def write_summary(out: str | os.PathLike, summary: dict) -> tuple[Path, Path]:
    """``out/summary.json`` and ``out/summary.md``, atomically."""
    root = Path(out)
    write_json(root / "summary.json", summary)
    write_text(root / "summary.md", summary_markdown(summary))
    return root / "summary.json", root / "summary.md"


def summary_markdown(s: dict) -> str:
    f = lambda x: "n/a" if x is None else f"{x:,.2f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [
        "# siammae-track batch summary",
        "",
        f"- videos: {s['videos']} ({s['complete']} done, {s['skipped']} skipped as already done, {s['error']} failed"
        + (f", {s['interrupted']} interrupted" if s["interrupted"] else "")
        + ")",
        f"- frames tracked: {s['frames']} in {f(s['wall_seconds'])} s: {f(s['frames_per_second'])} frames/s, "
        f"{f(s['videos_per_second'])} videos/s",
        f"- peak host memory: {f(s['peak_host_mib'])} MiB; peak GPU memory: "
        + (f"{f(s['peak_gpu_mib'])} MiB" if s["peak_gpu_mib"] else "n/a"),
        "",
        "| video | status | frames | size | fps | decode | encode | propagate | write | host MiB | GPU MiB | error |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in s["rows"]:
        st = r["stage_fps"]
        size = f"{r['width']}x{r['height']}" if r["width"] else "n/a"
        stages = " | ".join(f(st.get(k)) for k in ("decode", "encode", "propagate", "write"))
        error = (r["error"] or "").replace("|", "\\|")
        lines.append(f"| {r['name']} | {r['status']} | {r['frames']} | {size} | {f(r['fps'])} | {stages} | "
                     f"{f(r['peak_host_mib'])} | {f(r['peak_gpu_mib'])} | {error} |")  # fmt: skip
    lines += ["", "Stage columns are frames per second of each stage (decoding and writing overlap the others).", ""]
    return "\n".join(lines)


def run_batch(
    tracker: Tracker,
    items: list[BatchItem],
    out: str | os.PathLike,
    *,
    rank: Rank | None = None,
    overlay: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """What ``siammae-track`` runs for several videos: this rank's share of ``items`` (:mod:`siammae.tracking.shard`;
    all of them in a single process) through :func:`track_many`, then, after every rank has finished, the summary
    of the whole batch, written by rank 0 to ``out/summary.{json,md}`` and returned on every rank. On Ctrl-C the
    summary of the videos done so far is written (single process) and KeyboardInterrupt raised."""
    rank = rank or current_rank()
    items = check_items(list(items), source="the batch")
    mine = shard([frame_count(i) for i in items], rank.world)[rank.rank] if rank.distributed else range(len(items))
    t0 = time.perf_counter()
    results: list[tuple[int, VideoResult]] = []
    runs = track_many(tracker, [items[i] for i in mine], out, overlay=overlay, overwrite=overwrite, progress=progress)
    try:
        for i, result in zip(mine, runs, strict=True):  # track_many yields one result per item
            results.append((i, result))
    except KeyboardInterrupt:
        if not rank.distributed:
            write_summary(out, summarise([r for _, r in results], time.perf_counter() - t0))
        raise
    everything = sorted((pair for part in gather(rank, results) for pair in part), key=lambda p: p[0])
    summary = summarise([r for _, r in everything], time.perf_counter() - t0)
    summary["ranks"] = rank.world
    if rank.rank == 0:
        write_summary(out, summary)
    finish(rank)
    return summary
