"""Many videos in one resumable run: :func:`track_many`, :func:`run_batch` and the summary (the videos themselves
come from :mod:`siammae.tracking.manifest`).

Each video gets a folder of its own under ``out`` (its ``out`` name, else its stem)::

    out/<name>/masks/00000.png ...     (or keypoints.json + keypoints.jsonl)
    out/<name>/report.json, report.md  (the run's report; "status": "complete" once finished)
    out/<name>/overlay.mp4             (with overlay=True)
    out/summary.json, summary.md       (write_summary: one row per video and the totals)

A video is tracked into a hidden ``out/.<name>.partial`` folder that replaces ``out/<name>`` only when its run has
ended (complete, failed or interrupted), so a folder is always one run's outputs, never a mix. A video whose report
says "complete" is skipped on the next run (``overwrite=True`` redoes it); any other is redone from the start. A
video that fails is recorded with its error (its report says "error") and the batch goes on.

The batch claims ``out`` as a single-video run claims its folder (:class:`siammae.output_folder.OutputFolder`): one
batch at a time (a second one into the same ``out`` stops with an error naming the first one's pid), no symbolic link
anywhere inside (a planted ``out/<name>`` or ``out/.<name>.partial`` link is refused, never followed), leftovers of
a killed run removed. A video "complete" in ``out`` is skipped only when it is the same work: the same video and
the same settings (the preset's record, the size, the weights' sha256, the dtype and encoder type:
:meth:`~siammae.tracking.report.RunSettings.changes`); a manifest row that now names another video, or a run with
other weights or options, stops with an error before the first video (``overwrite`` redoes them).

A video's folder is replaced only when it holds nothing but what a batch writes
(:data:`siammae.tracking.manifest.VIDEO_FILES`); any other file there is an error before the first video, never
deleted. With ``overwrite`` the folder ends up holding this batch's outputs only: other video folders a batch wrote
are removed, any other entry is an error (:func:`siammae.tracking.manifest.check_batch_folder`, also asked before
the model loads). Under ``torchrun`` rank 0 holds the claim for every rank.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from siammae.data.video import count_frames
from siammae.errors import InputError, OutputError, SiamMAEError
from siammae.io import read_json, write_json, write_text
from siammae.output_folder import OutputFolder
from siammae.propagation.driver import Tracker
from siammae.torchrun import Rank, current_rank, finish, gather, init
from siammae.tracking.manifest import BatchItem, check_batch_folder, check_items
from siammae.tracking.report import RunReport, now_iso
from siammae.tracking.run import settings
from siammae.tracking.shard import shard
from siammae.tracking.track import track_video


@dataclass
class VideoResult:
    """What became of one video: status "complete" | "skipped" (finished by an earlier run) | "error" |
    "interrupted"; ``report`` its run report (None when it failed before the run started)."""

    item: BatchItem
    status: str
    folder: Path
    error: str | None = None
    report: RunReport | None = field(default=None, repr=False)

    def row(self) -> dict:
        """One line of the summary."""
        r = self.report
        return {
            "name": self.item.name,
            "video": self.item.video,
            "status": self.status,
            "error": self.error,
            "frames": 0 if r is None else r.frames,
            "width": None if r is None else r.video.width,
            "height": None if r is None else r.video.height,
            "seconds": None if r is None else r.time.total_seconds,
            "fps": None if r is None else r.fps,
            "stage_fps": {} if r is None else {s: x.fps for s, x in r.time.stages.items()},
            "peak_host_mib": None if r is None else r.memory.peak_host_mib,
            "peak_gpu_mib": None if r is None else r.memory.peak_gpu_mib,
            "output": str(self.folder),
        }


def frame_count(item: BatchItem) -> int:
    """Frames of a video, for balancing shards (0 when it cannot be read: it will fail in its run)."""
    try:
        return count_frames(item.video)
    except (InputError, OSError):
        return 0


# ------------------------------------------------------------------------------------------- the folder
def _remove(path: Path) -> None:
    """Remove a file, a link (not its target) or a folder."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def claim_batch_folder(out, items: list[BatchItem], overwrite: bool) -> OutputFolder:
    """Claim ``out`` for a batch (see the module docstring); checked before any video is tracked."""
    root = Path(out)
    folder = OutputFolder(root, overwrite=overwrite)  # lock, no links inside, leftovers of a killed run removed

    def check() -> None:
        for e in check_batch_folder(root, items, overwrite):  # other videos' folders of an earlier batch
            _remove(e)

    try:
        return folder.open(check)
    except OSError as e:
        if isinstance(e, SiamMAEError):
            raise
        raise OutputError(f"--out {root}: {e.strerror or e}") from e


# ------------------------------------------------------------------------------------------------- runs
def track_many(
    tracker: Tracker,
    items: Iterable[BatchItem | dict],
    out: str | os.PathLike,
    *,
    overlay: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    claim: bool = True,
) -> Iterator[VideoResult]:
    """Track every video of ``items`` (:class:`BatchItem` or dicts with its fields) with ``tracker``, one output
    folder each under ``out`` (see the module docstring); yield one :class:`VideoResult` per video, in order.

    A finished video (report status "complete") is skipped unless ``overwrite``; a failing one is recorded and the
    batch goes on. Ctrl-C ends the batch after recording the video it stopped in (KeyboardInterrupt is raised).
    claim: take the claim on ``out`` (:func:`claim_batch_folder`) for the batch; False when the caller holds it
    (:func:`run_batch`, for every rank).
    """
    from tqdm import tqdm

    items = check_items([BatchItem(**i) if isinstance(i, dict) else i for i in items], source="track_many")
    root = Path(out)
    held = claim_batch_folder(root, items, overwrite) if claim else None
    try:
        done = check_resume(tracker, items, root, overwrite)
    except BaseException:
        if held is not None:
            held.close()
        raise
    bar = tqdm(total=len(items), unit="video", desc="videos", disable=not progress, dynamic_ncols=True)
    try:
        for item in items:
            if item.name in done:
                result = VideoResult(item, "skipped", root / item.name, None, done[item.name])
            else:
                result = _track_one(tracker, item, root, overlay, progress)
            bar.update(1)
            yield result
    finally:
        bar.close()
        if held is not None:
            held.close()


def check_resume(tracker: Tracker, items: list[BatchItem], root: Path, overwrite: bool) -> dict[str, RunReport]:
    """The reports of the videos an earlier run finished with the same video and settings (skipped), by name;
    an :class:`~siammae.errors.OutputError` for a finished video that is another video or was tracked with other
    settings, before any video is tracked. Nothing with ``overwrite`` (every video is redone)."""
    if overwrite:
        return {}
    now = settings(tracker)
    done = {}
    for item in items:
        report = _read_report(root / item.name / "report.json")
        if report is None or report.status != "complete":
            continue  # redone from the start
        if report.video.path != str(Path(item.video)):
            raise OutputError(f"--out {root}: {item.name}/ holds the finished results of {report.video.path}, not of "
                              f"{item.video}; give --overwrite to redo it, or another --out")  # fmt: skip
        changed = report.settings.changes(now)
        if changed:
            raise OutputError(f"--out {root}: {item.name}/ was finished with other settings ({', '.join(changed)} "
                              "differ); give --overwrite to redo it, or another --out")  # fmt: skip
        done[item.name] = report
    return done


def _track_one(tracker, item: BatchItem, root: Path, overlay: bool, progress: bool) -> VideoResult:
    folder = root / item.name
    partial = root / f".{item.name}.partial"
    if partial.exists() or partial.is_symlink():  # left by a run that was killed (a link: removed, not followed)
        _remove(partial)
    partial.mkdir()
    outputs = {"report": partial / "report.json", "overlay": partial / "overlay.mp4" if overlay else None,
               "overwrite": True, "progress": progress}  # fmt: skip
    started = now_iso()
    try:
        if item.keypoints is not None:
            report = track_video(tracker, item.video, keypoints=item.keypoints, out=partial, **outputs)
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


def _read_report(path: Path) -> RunReport | None:
    """A video's run report, never through a link (a planted ``out/<name>`` link must not count as done); None
    when there is none or it is not a whole report (a run that failed before it started writes a short one)."""
    if path.is_symlink() or path.parent.is_symlink():
        return None
    try:
        return RunReport.from_json(read_json(path))
    except (InputError, KeyError, TypeError, ValueError, AttributeError):  # unreadable, or not a whole report
        return None


def _replace(
    partial: Path, folder: Path, item: BatchItem, started: str, status: str, error: str | None
) -> RunReport | None:
    """Put the run's folder in place of ``folder``; a run that failed before its report gets a short one."""
    report = _read_report(partial / "report.json")
    if report is None and not (partial / "report.json").exists():  # failed before the run started (bad mask)
        short = {"status": status, "error": error, "started": started, "frames": 0, "video": {"path": item.video}}
        write_json(partial / "report.json", short)
    old = folder.with_name(f".{folder.name}.old")
    if old.exists() or old.is_symlink():
        _remove(old)
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder, old)  # a link is moved, never followed
    os.replace(partial, folder)
    if old.exists() or old.is_symlink():
        _remove(old)
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
        error = " ".join((r["error"] or "").split()).replace("|", "\\|")  # one table cell: no newline, no column
        lines.append(f"| {r['name']} | {r['status']} | {r['frames']} | {size} | {f(r['fps'])} | {stages} | "
                     f"{f(r['peak_host_mib'])} | {f(r['peak_gpu_mib'])} | {error} |")  # fmt: skip
    lines += ["", "Stage columns are frames per busy second of each stage, in its own thread (decoding in the reader, "
              "writing in the writer thread, overlapping encoding and propagation).", ""]  # fmt: skip
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
    summary of the videos done so far is written (single process) and KeyboardInterrupt raised.

    ``out`` is claimed before the first video (:func:`claim_batch_folder`; by rank 0 for every rank, which all stop
    with its error if it fails). Under torchrun the process group is joined here if the caller has not
    (:func:`siammae.torchrun.init`)."""
    rank = rank or current_rank()
    items = check_items(list(items), source="the batch")
    init(rank)
    claim, error = None, None
    if rank.rank == 0:
        try:
            claim = claim_batch_folder(out, items, overwrite)
        except SiamMAEError as e:
            error = e
    errors = [e for e in gather(rank, None if error is None else str(error)) if e is not None]
    if errors:
        raise error if error is not None else OutputError(errors[0])
    try:
        check_resume(tracker, items, Path(out), overwrite)  # every rank, every video: all stop alike
        summary = _run_share(tracker, items, out, rank, overlay, overwrite, progress)
    finally:
        if claim is not None:
            claim.close()
    finish(rank)
    return summary


def _run_share(tracker, items, out, rank: Rank, overlay: bool, overwrite: bool, progress: bool) -> dict:
    """This rank's videos, then (after every rank is done) the summary of all, written by rank 0."""
    mine = shard([frame_count(i) for i in items], rank.world)[rank.rank] if rank.distributed else range(len(items))
    t0 = time.perf_counter()
    results: list[tuple[int, VideoResult]] = []
    runs = track_many(tracker, [items[i] for i in mine], out, overlay=overlay, overwrite=overwrite, progress=progress,
                      claim=False)  # fmt: skip
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
    return summary
