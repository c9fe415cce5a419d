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
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from siammae.errors import InputError, VideoError

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
    except OSError:
        return False
    return f'"format": "{FORMAT}"' in head or f'"format":"{FORMAT}"' in head


def _join(location: str, name: str) -> str:
    return location.rstrip("/") + "/" + name if is_url(location) else str(Path(location) / name)


def _http_get(url: str, start: int | None = None, length: int | None = None, timeout: float = 60.0) -> bytes:
    """GET ``url`` (a byte range when ``start`` is given); retried on connection errors, a VideoError after that."""
    headers = {} if start is None else {"Range": f"bytes={start}-{start + length - 1}"}
    for attempt in range(HTTP_ATTEMPTS):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                data = r.read()
                if start is not None and r.status == 200:  # a server that ignores ranges sends the whole file
                    data = data[start : start + length]
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


class PreparedFrames:
    """Random access to the JPEG bytes of a prepared data set (a folder or an HTTP(S) URL prefix).

    Picklable and fork-safe (DataLoader workers): shard files are opened lazily, once per process, and read with
    ``os.pread`` (no shared seek position). ``offsets`` is memory-mapped for a local folder.
    """

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.remote = is_url(self.location)
        if self.remote:
            index = json.loads(_http_get(_join(self.location, INDEX)))
            offsets = np.load(io.BytesIO(_http_get(_join(self.location, OFFSETS))))
        else:
            path = Path(self.location) / INDEX
            try:
                index = json.loads(path.read_text())
                offsets = np.load(Path(self.location) / OFFSETS, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(f"{self.location}: not a readable prepared data set ({e})") from e
        if index.get("format") != FORMAT:
            raise InputError(f"{self.location}: {INDEX} is not a {FORMAT} index (made by siammae-prepare)")
        if index.get("version") != VERSION:
            raise InputError(f"{self.location}: prepared format version {index.get('version')}, expected {VERSION}")
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
