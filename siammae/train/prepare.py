"""``prepare(videos, out)``: videos -> the prepared frame format of :mod:`siammae.data.shards`, for fast pretraining.

Every frame is decoded once, resized so that its short side is ``short_side`` (never enlarged; the paper crops 224
pixels from an area scale of 0.5-1, so 256 keeps the crops at full resolution) and stored as a JPEG in a tar shard.
Training then reads two JPEGs per pair instead of seeking and decoding h264 (see ``benchmarks/bench_loader.py``).

The videos are assigned to shards up front (``videos_per_shard`` consecutive videos of the sorted list), so a run
is resumable at shard granularity: a shard whose tar and ``.json`` part are both present is kept, the others are
(re)made, in parallel over ``workers`` processes. A video that cannot be decoded is rolled back out of its shard,
listed in ``skipped.txt`` and left out of the index. ``prepare.json`` records the inputs and settings; running again
into the same folder with other ones is refused rather than mixing two data sets. The output folder is held with
:class:`~siammae.output_folder.OutputFolder` (one run at a time; a killed run's temporary tar is removed on the next
run).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from siammae.data import shards as S
from siammae.errors import InputError, SiamMAEError, VideoError
from siammae.io import atomic_write, parse_json, read_json, write_json, write_text
from siammae.output_folder import LOCK_NAME, OutputFolder, check_folder_free

MANIFEST = "prepare.json"


@dataclass(frozen=True)
class PrepareSettings:
    short_side: int = 256  # frames are resized (down only) to this short side
    quality: int = 90  # JPEG quality
    videos_per_shard: int = 64  # Kinetics clips at 256 px: ~3-5 MB each, so shards of a few hundred MB

    def __post_init__(self):
        if self.short_side < 16:
            raise InputError(f"--short-side {self.short_side}: must be at least 16")
        if not 1 <= self.quality <= 100:
            raise InputError(f"--quality {self.quality}: must be in 1..100")
        if self.videos_per_shard < 1:
            raise InputError(f"--videos-per-shard {self.videos_per_shard}: must be at least 1")


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    videos: int  # videos in the index
    frames: int
    bytes: int  # total size of the shards
    skipped: tuple[tuple[str, str], ...]  # (source, reason) of the videos left out
    shards_made: int
    shards_kept: int  # finished by an earlier run and reused
    seconds: float

    def summary(self) -> str:
        lines = [
            f"prepared {self.videos} videos, {self.frames} frames, {self.bytes / 2**20:.1f} MiB in "
            f"{self.shards_made + self.shards_kept} shards ({self.shards_kept} kept from an earlier run) "
            f"in {self.seconds:.1f} s: {self.out}",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable videos (listed in {self.out / 'skipped.txt'}):")
            lines += [f"  {_skip_line(src, why)}" for src, why in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"  ... and {len(self.skipped) - 10} more")
        return "\n".join(lines)


def _skip_line(source: str, reason: str) -> str:
    """``source: reason`` without naming the source twice (video errors start with the path)."""
    return reason if reason.startswith(source) else f"{source}: {reason}"


# ------------------------------------------------------------------------------------------ one video, one shard
def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Resize so that the short side is ``short_side`` (antialiased bilinear); smaller frames are kept as they are."""
    w, h = img.size
    if min(w, h) <= short_side:
        return img
    scale = short_side / min(w, h)
    size = (short_side, round(h * scale)) if w <= h else (round(w * scale), short_side)
    return img.resize(size, Image.BILINEAR)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _add_video(writer: S.ShardWriter, vid: int, source: str, settings: PrepareSettings) -> dict:
    """Decode, resize and store every frame of one video -> its part of the index; a VideoError on failure."""
    from siammae.data.video import open_video

    offsets, size = [], None
    try:
        for frame in open_video(source):
            img = resize_short_side(Image.fromarray(frame.rgb), settings.short_side)
            if size is None:
                size = img.size
            elif img.size != size:
                raise VideoError(f"{source}: frame {frame.index} is {img.size[0]}x{img.size[1]}, the first {size}")
            offsets.append(writer.add(S.frame_member(vid, frame.index), encode_jpeg(img, settings.quality)))
    except VideoError as e:
        # the header promised more frames than decode (real clips state one too many), or the tail is damaged:
        # every frame that decoded before is good training data; a size change or no pair at all is not
        if size is None or len(offsets) < 2 or "decoding stopped" not in str(e):
            raise
    if len(offsets) < 2:
        raise VideoError(f"{source}: {len(offsets)} frame(s), a pair needs at least 2")
    width, height = size
    return {"id": vid, "source": source, "frames": len(offsets), "width": width, "height": height, "offsets": offsets}


def prepare_shard(out: Path, shard: int, videos: list[tuple[int, str]], settings: PrepareSettings) -> dict:
    """Write shard ``shard`` of ``videos`` ((id, source) pairs) -> its index part (also saved as shard-K.json)."""
    part = {"shard": shard, "videos": [], "skipped": []}
    tar_path = out / S.shard_name(shard)
    with atomic_write(tar_path) as tmp:
        writer = S.ShardWriter(tmp)
        for vid, source in videos:
            mark = writer.mark()
            try:
                part["videos"].append(_add_video(writer, vid, source, settings))
            except (VideoError, OSError) as e:
                writer.rollback(mark)
                part["skipped"].append([source, str(e).splitlines()[0] if str(e) else type(e).__name__])
        part["bytes"] = writer.close()
    write_json(_part_path(out, shard), part, indent=None)  # last: its presence marks the shard finished
    return part


def _part_path(out: Path, shard: int) -> Path:
    return out / S.shard_name(shard).replace(".tar", ".json")


def _finished_part(out: Path, shard: int, videos: list[tuple[int, str]]) -> dict | None:
    """The index part of a shard an earlier run finished, or None (absent, incomplete or not these videos)."""
    path = _part_path(out, shard)
    try:  # a damaged part (not JSON, other types: an InputError, a ValueError) only means the shard is redone
        part = parse_json(path.read_bytes(), path, keys={"videos": list, "skipped": list, "bytes": int})
        size = (out / S.shard_name(shard)).stat().st_size
        got = {v["source"] for v in part["videos"]} | {s for s, _ in part["skipped"]}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if size != part["bytes"] or got != {source for _, source in videos}:
        return None
    return part


# ------------------------------------------------------------------------------------------------ the data set
def prepare(
    inputs,
    out: str | os.PathLike,
    settings: PrepareSettings | None = None,
    workers: int = 1,
    quiet: bool = False,
) -> PrepareResult:
    """Prepare the videos of ``inputs`` (folders, video files, frame folders, .txt lists) into ``out``."""
    from siammae.train.data import find_videos

    settings = settings or PrepareSettings()
    if workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    out = Path(out)
    check_folder_free(out, exclusive=False)  # not a file, not a link: before the videos are listed
    sources = [str(Path(v).resolve()) for v in find_videos(inputs, option="")]
    # one writer per folder (the lock tracking and training take too); opening it also removes the temporary
    # files of a killed run (a half-written shard tar of a kill -9), which nothing else would ever clean
    with OutputFolder(out, what="--out"):
        return _prepare(sources, out, settings, workers, quiet)


def _prepare(sources: list[str], out: Path, settings: PrepareSettings, workers: int, quiet: bool) -> PrepareResult:
    _check_manifest(out, sources, settings)
    t0 = time.perf_counter()
    per = settings.videos_per_shard
    jobs = [list(enumerate(sources))[k : k + per] for k in range(0, len(sources), per)]
    parts: dict[int, dict] = {}
    for k, videos in enumerate(jobs):
        part = _finished_part(out, k, videos)
        if part is not None:
            parts[k] = part
    kept = len(parts)
    todo = [k for k in range(len(jobs)) if k not in parts]

    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        done_videos = sum(len(jobs[k]) for k in parts)
        bar = tqdm(total=len(sources), initial=done_videos, unit="video", file=sys.stderr, dynamic_ncols=True)
    try:
        if workers == 1 or len(todo) <= 1:
            for k in todo:
                parts[k] = prepare_shard(out, k, jobs[k], settings)
                _advance(bar, parts[k])
        else:
            # fork where there is one: the workers run PyAV and PIL only (no torch / OpenMP threads to inherit),
            # and spawn would re-import the caller's __main__ (which fails for `python -` and notebooks)
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                futures = [pool.submit(prepare_shard, out, k, jobs[k], settings) for k in todo]
                try:
                    for f in as_completed(futures):
                        part = f.result()
                        parts[part["shard"]] = part
                        _advance(bar, part)
                except BrokenProcessPool as e:
                    raise SiamMAEError(
                        f"a preparing process died (out of memory? killed?); {len(parts)} of {len(jobs)} shards are "
                        "finished and kept: run the same command again to continue"
                    ) from e
    finally:
        if bar is not None:
            bar.close()

    ordered = [parts[k] for k in range(len(jobs))]
    meta = {k: v for k, v in asdict(settings).items() if k != "videos_per_shard"}
    index = S.write_index(out, meta, ordered)
    skipped = tuple((s, r) for s, r in index["skipped"])
    write_text(out / "skipped.txt", "".join(f"{s}\t{r}\n" for s, r in skipped))
    return PrepareResult(
        out=out,
        videos=len(index["videos"]),
        frames=index["total_frames"],
        bytes=sum(p["bytes"] for p in ordered),
        skipped=skipped,
        shards_made=len(todo),
        shards_kept=kept,
        seconds=time.perf_counter() - t0,
    )


def _advance(bar, part: dict) -> None:
    if bar is not None:
        bar.update(len(part["videos"]) + len(part["skipped"]))
        if part["skipped"]:
            for src, why in part["skipped"]:
                bar.write(f"skipped {_skip_line(src, why)}", file=sys.stderr)


def _check_manifest(out: Path, sources: list[str], settings: PrepareSettings) -> None:
    """Write ``prepare.json`` on the first run; refuse to continue a folder made from other videos or settings."""
    manifest = {"settings": asdict(settings), "videos": sources}
    path = out / MANIFEST
    if path.is_file():
        try:
            old = read_json(path, keys={"settings": dict, "videos": list})
        except InputError as e:
            raise InputError(f"{e}; choose another --out") from None
        if old["settings"] != manifest["settings"]:
            what = ", ".join(
                f"{k} {old['settings'].get(k)} -> {v}"
                for k, v in asdict(settings).items()
                if old["settings"].get(k) != v
            )
            raise InputError(f"--out {out} was prepared with other settings ({what}); choose another --out")
        if old["videos"] != sources:
            raise InputError(
                f"--out {out} was prepared from other videos ({len(old['videos'])} then, {len(sources)} now); "
                "choose another --out"
            )
        return
    if out.is_dir() and any(e.name != LOCK_NAME for e in out.iterdir()):
        raise InputError(f"--out {out}: folder is not empty and holds no {MANIFEST}; choose an empty or new folder")
    write_json(path, manifest)
