"""The prepared frame format: JPEG frames in tar shards (WebDataset layout) plus an index of byte offsets.

Why tar shards in the WebDataset layout: a tar file is a plain sequence of (512-byte header, data) records, so a
frame is one contiguous byte range that a reader fetches with one ``pread`` or one HTTP range request, with no
container library; the same files stream sequentially with ``webdataset`` / ``tar`` / any object store, and the
layout (member ``<key>.<ext>``, key ``<video>/<frame>``) is the one most video pretraining pipelines already read.
Alternatives weighed: one JPEG per file (millions of small files: slow on shared file systems and object stores),
LMDB / HDF5 (need their library on every node and cannot be served over plain HTTP), MP4 re-encodes (decoding,
not reading, is the cost we are removing).

A prepared folder holds::

    index.json          format, short side, quality; per video its source, shard, frame count, size and first row
    offsets.npy         (total_frames, 2) int64: [byte offset of the JPEG data in its shard, byte length]
    shard-000000.tar    members 00000000/000000.jpg, 00000000/000001.jpg, ... (video id / frame number)
    shard-000000.json   the shard's own part of the index (written after the tar: its presence marks the shard done)
    skipped.txt         videos that could not be read, with the reason

Frame ``t`` of video ``v`` is ``shard[offsets[first_v + t, 0] : +offsets[first_v + t, 1]]``. The folder can be read
from a local or shared file system or from an HTTP(S) URL prefix (range requests; see :class:`PreparedFrames`).

A reader trusts nothing it reads: shard names in the index must be plain file names (``shard-000000.tar``; never
``../x`` or ``/abs``), every field it uses is type- and range-checked, ``offsets.npy`` is loaded with
``allow_pickle=False`` and must be a (frames, 2) integer array, and remote bodies are read with stated bounds
(:data:`MAX_INDEX_BYTES` for the index, the size the index implies for the offsets, :data:`MAX_FRAME_BYTES` per
frame), so an HTML error page, a truncated or oversized answer or a damaged index is one error naming the file.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from siammae.errors import InputError, VideoError
from siammae.io import parse_json

FORMAT = "siammae-prepared-frames"
VERSION = 1
INDEX = "index.json"
OFFSETS = "offsets.npy"
BLOCK = 512  # tar record size
HTTP_ATTEMPTS = 3  # a range request is retried this many times on a connection error (not on an HTTP error status)


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def frame_member(video_id: int, t: int) -> str:
    """Tar member name of a frame: WebDataset key ``<video>/<frame>``, extension ``jpg``."""
    return f"{video_id:08d}/{t:06d}.jpg"


# ------------------------------------------------------------------------------------------------------ writing
class ShardWriter:
    """Appends JPEG frames to an uncompressed ustar file, remembering where each one's data starts.

    ``mark()`` / ``rollback()`` drop the members written since the mark (a video that fails half-way leaves
    nothing in the shard).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self.pos = 0
        self.mtime = int(time.time())

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Write one member -> (offset of its data in the file, its length)."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o644
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        pad = -len(data) % BLOCK
        self.file.write(header + data + b"\0" * pad)
        offset = self.pos + len(header)
        self.pos += len(header) + len(data) + pad
        return offset, len(data)

    def mark(self) -> int:
        return self.pos

    def rollback(self, mark: int) -> None:
        self.file.seek(mark)
        self.file.truncate(mark)
        self.pos = mark

    def close(self) -> int:
        """End the archive (two zero records) and close -> the file size."""
        self.file.write(b"\0" * (2 * BLOCK))
        self.pos += 2 * BLOCK
        self.file.close()
        return self.pos


def write_index(root: Path, meta: dict, shard_parts: list[dict]) -> dict:
    """Merge the per-shard parts into ``index.json`` + ``offsets.npy`` (atomically) -> the index dict."""
    from siammae.io import atomic_write, write_json

    videos, rows, skipped = [], [], []
    for part in shard_parts:
        for v in part["videos"]:
            videos.append({k: v[k] for k in ("id", "source", "frames", "height", "width")} | {"shard": part["shard"]})
            videos[-1]["first"] = len(rows)
            rows.extend(v["offsets"])
        skipped.extend(part["skipped"])
    offsets = np.asarray(rows, dtype=np.int64).reshape(-1, 2)  # (total_frames, 2)
    with atomic_write(root / OFFSETS) as tmp, open(tmp, "wb") as f:
        np.save(f, offsets)
    index = {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "shards": [shard_name(p["shard"]) for p in shard_parts],
        "total_frames": len(rows),
        "videos": videos,
        "skipped": skipped,
    }
    write_json(root / INDEX, index, indent=None)
    return index


# ------------------------------------------------------------------------------------------------------ reading
# Bounds on what a reader accepts, so that a wrong URL or a damaged index is an error, not gigabytes of memory.
MAX_INDEX_BYTES = 256 * 2**20  # index.json: ~200 bytes per video, so about a million videos
MAX_NPY_HEADER = 64 * 2**10  # offsets.npy's header (numpy writes 128 bytes); its body is 16 bytes per frame
MAX_FRAME_BYTES = 64 * 2**20  # one JPEG frame (a 256-px frame is ~24 KB; 4K at quality 100 is ~10 MB)
MAX_TOTAL_FRAMES = 2**40  # frames (and video ids) of one data set: 16 bytes of offsets each stays far inside int64
MAX_SIDE = 65535  # a JPEG's largest side
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.tar")
_VIDEO_KEYS = ("id", "source", "shard", "frames", "first", "height", "width")


def is_url(location: str) -> bool:
    return str(location).startswith(("http://", "https://"))


def is_prepared(location: str | os.PathLike) -> bool:
    """True for a prepared folder (it holds ``index.json`` of this format) or an HTTP(S) URL prefix."""
    location = str(location)
    if is_url(location):
        return True
    index = Path(location) / INDEX
    if not index.is_file():
        return False
    try:
        with open(index) as f:
            head = f.read(200)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"format": "{FORMAT}"' in head or f'"format":"{FORMAT}"' in head


def _join(location: str, name: str) -> str:
    return location.rstrip("/") + "/" + name if is_url(location) else str(Path(location) / name)


def _read_body(r, url: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a response; a larger body (by its Content-Length or as it arrives) is an error."""
    declared = r.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise VideoError(f"{url}: the server announces {int(declared)} bytes, more than the {limit} accepted")
    data = r.read(limit + 1)
    if len(data) > limit:
        raise VideoError(f"{url}: the body is larger than the {limit} bytes accepted")
    return data


def _skip(r, n: int) -> None:
    """Discard ``n`` bytes of a response in 1 MiB pieces (a server that ignores ranges sends the whole file)."""
    while n > 0:
        got = r.read(min(n, 2**20))
        if not got:
            return
        n -= len(got)


def _http_get(
    url: str, start: int | None = None, length: int | None = None, timeout: float = 60.0, limit: int | None = None
) -> bytes:
    """GET ``url``: the whole body (at most ``limit`` bytes) or ``length`` bytes from ``start`` (a range request);
    retried on connection errors, a VideoError after that, on an HTTP error status, or on a wrong-sized answer."""
    headers = {} if start is None else {"Range": f"bytes={start}-{start + length - 1}"}
    for attempt in range(HTTP_ATTEMPTS):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                if start is None:
                    data = _read_body(r, url, limit if limit is not None else MAX_INDEX_BYTES)
                elif r.status == 206:
                    _check_content_range(r.headers.get("Content-Range"), url, start, length)
                    data = r.read(length)
                else:  # 200: a server that ignores ranges sends the whole file; read through to our bytes only
                    _skip(r, start)
                    data = r.read(length)
                break
        except urllib.error.HTTPError as e:
            raise VideoError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == HTTP_ATTEMPTS - 1:
                raise VideoError(f"{url}: cannot read ({getattr(e, 'reason', e)})") from e
            time.sleep(0.5 * 2**attempt)
    if length is not None and len(data) != length:
        raise VideoError(f"{url}: got {len(data)} bytes of {length} at offset {start} (shard truncated?)")
    return data


def _check_content_range(header: str | None, url: str, start: int, length: int) -> None:
    """A 206 must answer the range asked (``bytes START-END/SIZE``): another range would be other frames' bytes."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (header or "").strip())
    if m is None:
        return  # no (parsable) Content-Range: the length check after the read still applies
    if int(m.group(1)) != start or int(m.group(2)) > start + length - 1:
        raise VideoError(f"{url}: asked bytes {start}-{start + length - 1}, the server sent {header}")


def _bad(location: str, what: str) -> InputError:
    return InputError(f"{location}: not a usable prepared data set: {what} (remake it with siammae-prepare)")


def _parse_index(location: str, data: bytes) -> dict:
    """``index.json``'s bytes -> the index dict, every field a reader uses checked (types, ranges, shard names)."""
    where = _join(location, INDEX)
    head = data[:40].decode("utf-8", "replace").strip()
    if head.lower().startswith(("<!doctype", "<html")):
        raise _bad(where, f"{INDEX} is an HTML page, starting {head!r}")
    try:
        index = parse_json(data, where, (dict, list))
    except InputError as e:
        raise _bad(where, f"{INDEX} is {str(e).removeprefix(where + ': ')}, starting {head!r}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InputError(f"{where}: {INDEX} is not a {FORMAT} index (made by siammae-prepare)")
    if index.get("version") != VERSION:
        raise InputError(f"{where}: prepared format version {index.get('version')}, expected {VERSION}")
    for key, kind in (("shards", list), ("videos", list), ("total_frames", int)):
        if not isinstance(index.get(key), kind) or isinstance(index.get(key), bool):
            raise _bad(where, f"its {key!r} entry is missing or not a {kind.__name__}")
    if not 0 <= index["total_frames"] <= MAX_TOTAL_FRAMES:
        raise _bad(where, f"total_frames {index['total_frames']} is outside 0..{MAX_TOTAL_FRAMES}")
    _check_shard_names(where, index["shards"])
    for i, v in enumerate(index["videos"]):
        _check_video(where, i, v, len(index["shards"]), index["total_frames"])
    return index


def _check_shard_names(where: str, names: list) -> None:
    for name in names:
        # names are data, never paths: a shard outside the folder (../../etc/passwd, /abs, a URL) is refused
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
            raise _bad(where, f"shard name {name!r} is not a plain file name ending in .tar (letters, digits, ._-)")


def _check_video(where: str, i: int, v, n_shards: int, total: int) -> None:
    """One entry of the index's ``videos``: its keys present, ``source`` a string, every number a whole number in
    its range (so that no later arithmetic or int64 column overflows: ``height`` 10**30 is an error here)."""
    missing = [k for k in _VIDEO_KEYS if not isinstance(v, dict) or k not in v]
    if missing:
        raise _bad(where, f"video {i} lacks {', '.join(repr(k) for k in missing)}")
    if not isinstance(v["source"], str):
        raise _bad(where, f"video {i}: source {v['source']!r} is not a string")
    bounds = {"id": (0, MAX_TOTAL_FRAMES), "shard": (0, MAX_TOTAL_FRAMES), "frames": (1, MAX_TOTAL_FRAMES),
              "first": (0, MAX_TOTAL_FRAMES), "height": (1, MAX_SIDE), "width": (1, MAX_SIDE)}  # fmt: skip
    for key in bounds:
        if not isinstance(v[key], int) or isinstance(v[key], bool):
            raise _bad(where, f"video {i}: {key} {v[key]!r} is not a whole number")
    if v["first"] + v["frames"] > total:
        raise _bad(
            where, f"video {i}: rows {v['first']}..{v['first'] + v['frames'] - 1} beyond the index's {total} frames"
        )
    if not 0 <= v["shard"] < n_shards:
        raise _bad(where, f"video {i}: shard {v['shard']} is not one of the {n_shards} shards")
    for key, (lo, hi) in bounds.items():
        if not lo <= v[key] <= hi:
            raise _bad(where, f"video {i}: {key} {v[key]} is outside {lo}..{hi}")


def _check_offsets(location: str, offsets, total: int):
    where = _join(location, OFFSETS)
    if offsets.dtype.kind not in "iu" or offsets.ndim != 2 or offsets.shape[1] != 2:
        raise _bad(where, f"expected a (frames, 2) integer array, found {offsets.dtype} {tuple(offsets.shape)}")
    if offsets.shape[0] != total:
        raise _bad(where, f"{offsets.shape[0]} rows but {INDEX} counts {total} frames")
    return offsets


def _load_offsets_local(location: str, total: int):
    path = Path(location) / OFFSETS
    try:
        # allow_pickle=False: an object array (a pickle) is refused, never unpickled
        offsets = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(str(path), f"{OFFSETS} is not a numpy integer array ({e})") from None
    return _check_offsets(location, offsets, total)


def _load_offsets_remote(location: str, total: int):
    url = _join(location, OFFSETS)
    data = _http_get(url, limit=MAX_NPY_HEADER + 16 * total)  # the exact size the index implies, plus the header
    try:
        offsets = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _bad(url, f"{OFFSETS} is not a numpy integer array ({e})") from None
    return _check_offsets(location, offsets, total)


class PreparedFrames:
    """Random access to the JPEG bytes of a prepared data set (a folder or an HTTP(S) URL prefix).

    Picklable and fork-safe (DataLoader workers): shard files are opened lazily, once per process, and read with
    ``os.pread`` (no shared seek position). ``offsets`` is memory-mapped for a local folder.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.remote = is_url(self.location)
        if self.remote:
            index = _parse_index(self.location, _http_get(_join(self.location, INDEX), limit=MAX_INDEX_BYTES))
            offsets = _load_offsets_remote(self.location, index["total_frames"])
        else:
            path = Path(self.location) / INDEX
            try:
                size = path.stat().st_size
                if size > MAX_INDEX_BYTES:
                    raise _bad(str(path), f"{size} bytes, more than the {MAX_INDEX_BYTES} accepted")
                data = path.read_bytes()
            except OSError as e:
                raise InputError(f"{self.location}: not a readable prepared data set ({e.strerror or e})") from e
            index = _parse_index(self.location, data)
            offsets = _load_offsets_local(self.location, index["total_frames"])
        self.index = index
        self.shards = index["shards"]
        videos = index["videos"]
        # numpy columns, not a list of dicts: forked workers do not copy them (see train/data.py)
        self.sources = np.array([v["source"].encode() for v in videos])
        self.ids = np.array([v["id"] for v in videos], dtype=np.int64)
        self.shard = np.array([v["shard"] for v in videos], dtype=np.int32)
        self.frames = np.array([v["frames"] for v in videos], dtype=np.int64)
        self.first = np.array([v["first"] for v in videos], dtype=np.int64)
        self.sizes = np.array([(v["height"], v["width"]) for v in videos], dtype=np.int64).reshape(-1, 2)
        self.offsets = offsets
        self.short_side = index.get("short_side")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.frames)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def source(self, video: int) -> str:
        return self.sources[video].decode()

    def num_frames(self, video: int) -> int:
        return int(self.frames[video])

    def where(self, video: int, t: int) -> str:
        """``shard/member`` of a frame, for messages."""
        return f"{_join(self.location, self.shards[self.shard[video]])}:{frame_member(int(self.ids[video]), t)}"

    def read(self, video: int, frames: list[int]) -> list[bytes]:
        """The JPEG bytes of ``frames`` of ``video``; a VideoError naming the shard if they cannot be read."""
        n = self.num_frames(video)
        out = []
        for t in frames:
            if not 0 <= t < n:
                raise VideoError(f"{self.source(video)}: frame {t} asked but the prepared video has {n}")
            offset, length = (int(x) for x in self.offsets[self.first[video] + t])
            if offset < 0 or not 0 < length <= MAX_FRAME_BYTES:
                raise VideoError(
                    f"{self.where(video, t)}: offsets.npy says {length} bytes at {offset} (valid: 1..{MAX_FRAME_BYTES} "
                    "bytes at an offset >= 0; damaged index?)"
                )
            out.append(self._read_range(int(self.shard[video]), offset, length, video, t))
        return out

    def _read_range(self, shard: int, offset: int, length: int, video: int, t: int) -> bytes:
        name = self.shards[shard]
        if self.remote:
            return _http_get(_join(self.location, name), offset, length)
        if os.getpid() != self._pid:  # forked: descriptors of the parent are not ours to share
            self._fds, self._pid = {}, os.getpid()
        try:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(Path(self.location) / name, os.O_RDONLY)
            data = os.pread(fd, length, offset)
        except OSError as e:
            raise VideoError(f"{self.where(video, t)}: cannot read ({e.strerror or e})") from e
        if len(data) != length:
            raise VideoError(f"{self.where(video, t)}: shard ends before the frame (truncated shard?)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            self.close()
