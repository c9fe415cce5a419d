"""Which frames of a video file decode, and where each one is: the index that training reads pairs through.

A container's frame count is a claim, not a fact: real clips state one frame more than they decode
(``cotracker-pillow.mp4``: 149 stated, 147 decode), and a variable-frame-rate clip has no ``start + i / fps``
timestamp for its frame ``i``, so seeking by frame rate misses frames. The index is made by decoding the file once:

- ``pts``: the presentation timestamp of every frame that decodes, in presentation order. Frame ``i`` is the
  ``i``-th of these, whatever the frame rate and whatever the header says.
- ``keys``: the positions of the key frames among them, where a seek can land and decode forward.

:func:`read_indexed` then reads any frames: it seeks to the key frame at or before each wanted one (by its
timestamp), decodes forward and takes frames by their exact timestamps. A seek that lands after the target (some
demuxers seek badly) is retried from the key frame before, and finally from the start. A clip whose timestamps are
missing or repeated is read by decoding from the start and counting, which is slow but right.

Indexes are cached per file (path, size and modification time) as JSON under ``$SIAMMAE_CACHE`` (default
``$XDG_CACHE_HOME/siammae`` or ``~/.cache/siammae``), ``frame-index/``; a cache that cannot be written is skipped,
never an error. A file that truly cannot be decoded (no frame at all) is a :class:`VideoError` with its reason.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from siammae.errors import OutputError, VideoError, cause

INDEX_VERSION = 1
_MEMO: dict[tuple, FrameIndex] = {}  # per process: a worker builds or reads each file's index once


@dataclass(frozen=True)
class FrameIndex:
    """The decodable frames of one video file (see the module's docstring)."""

    path: str
    size: int  # bytes, and mtime_ns: which version of the file this describes
    mtime_ns: int
    width: int
    height: int
    pts: tuple[int, ...]  # presentation timestamps (stream time base) of the frames that decode, in order
    keys: tuple[int, ...]  # positions in ``pts`` of the key frames (always starts with 0)
    stated: int | None  # the container's frame count, for the record
    version: int = INDEX_VERSION

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def seekable(self) -> bool:
        """Frames can be found by timestamp: every one has a distinct timestamp."""
        return len(set(self.pts)) == len(self.pts)

    @functools.cached_property
    def positions(self) -> dict[int, int]:
        """Timestamp -> position, built once per index (every read of a pair uses it)."""
        return {p: i for i, p in enumerate(self.pts)}

    def key_before(self, position: int) -> int:
        """The position of the last key frame at or before ``position``."""
        return self.keys[max(0, bisect.bisect_right(self.keys, position) - 1)]


def _av():
    import av  # deferred: PyAV loads FFmpeg, which only the video paths need

    return av


def cache_root() -> Path:
    """``$SIAMMAE_CACHE``, else ``$XDG_CACHE_HOME/siammae``, else ``~/.cache/siammae``."""
    if os.environ.get("SIAMMAE_CACHE"):
        return Path(os.environ["SIAMMAE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "siammae"


def _identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _cache_file(identity: tuple[str, int, int]) -> Path:
    digest = hashlib.sha256(repr(identity).encode()).hexdigest()[:32]
    return cache_root() / "frame-index" / f"{digest}.json"


def build_index(path: str | os.PathLike) -> FrameIndex:
    """Decode ``path`` once and record every frame that decodes (no cache). A decoding error after some frames ends
    the index there (the frames before it are good); no frame at all is a VideoError."""
    path = Path(path)
    real, size, mtime = _identity(path)
    av = _av()
    pts, keys = [], []
    error = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            stated = stream.frames or None
            try:
                for frame in container.decode(stream):
                    if frame.key_frame or not keys:
                        keys.append(len(pts))
                    pts.append(frame.pts if frame.pts is not None else -1)
            except av.error.FFmpegError as e:  # a damaged tail: keep what decoded before it
                error = e
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot open video ({cause(e, path)})") from e
    if not pts:
        why = f" ({cause(error, path)})" if error is not None else ""
        raise VideoError(f"{path}: no frame decodes{why}")
    return FrameIndex(real, size, mtime, width, height, tuple(pts), tuple(keys), stated)


def frame_index(path: str | os.PathLike) -> FrameIndex:
    """The index of ``path``: from this process's memo, the on-disk cache, or :func:`build_index` (then cached)."""
    path = Path(path)
    try:
        identity = _identity(path)
    except OSError as e:
        raise VideoError(f"{path}: {cause(e, path)}") from e
    got = _MEMO.get(identity)
    if got is None:
        got = _read_cached(identity)
    if got is None:
        got = build_index(path)
        _write_cached(identity, got)
    _MEMO[identity] = got
    return got


def _read_cached(identity) -> FrameIndex | None:
    try:
        d = json.loads(_cache_file(identity).read_text())
        if d.get("version") != INDEX_VERSION:
            return None
        d["pts"], d["keys"] = tuple(int(p) for p in d["pts"]), tuple(int(k) for k in d["keys"])
        index = FrameIndex(**d)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # absent, or not ours: rebuilt
    ok = (index.path, index.size, index.mtime_ns) == identity and index.pts and index.keys and index.keys[0] == 0
    return index if ok else None


def _write_cached(identity, index: FrameIndex) -> None:
    from siammae.io import atomic_write

    target = _cache_file(identity)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as tmp:
            Path(tmp).write_text(json.dumps(asdict(index)))
    except (OSError, OutputError):
        pass  # a read-only or full cache only costs a rebuild next time


def read_indexed(path: str | os.PathLike, indices, index: FrameIndex | None = None) -> list[np.ndarray]:
    """Frames ``indices`` (positions among the frames that decode; any order, repeats allowed) of a video file as
    (H, W, 3) uint8 RGB arrays, in the order asked."""
    path = Path(path)
    index = index or frame_index(path)
    indices = [int(i) for i in indices]
    wanted = sorted(set(indices))
    if wanted and (wanted[0] < 0 or wanted[-1] >= len(index)):
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise VideoError(f"{path}: frame {bad} asked but the video ends before it ({len(index)} frames decode)")
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            got = (
                _read_seeking(container, stream, index, wanted)
                if index.seekable
                else _read_counting(container, stream, wanted)
            )
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed while reading frames {wanted} ({cause(e, path)})") from e
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoError(f"{path}: frame {missing[0]} not found (the file changed since it was indexed?)")
    return [got[i] for i in indices]


def _read_counting(container, stream, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames (timestamps missing or repeated)."""
    got, last = {}, wanted[-1] if wanted else -1
    targets = set(wanted)
    for i, frame in enumerate(container.decode(stream)):
        if i in targets:
            got[i] = frame.to_ndarray(format="rgb24")
        if i >= last:
            break
    return got


def _read_seeking(container, stream, index: FrameIndex, wanted: list[int]) -> dict[int, np.ndarray]:
    """Seek to the key frame before each run of wanted frames and decode forward, matching exact timestamps."""
    position = index.positions
    got: dict[int, np.ndarray] = {}
    pending = list(wanted)
    while pending:
        target = pending[0]
        for start in _seek_starts(index, target):
            if _decode_run(container, stream, index, start, pending, position, got):
                break
        else:
            break  # not found from any start: reported by the caller
    return got


def _seek_starts(index: FrameIndex, target: int):
    """Key frames to seek to for ``target``: the one before it, the one before that, then the start of the file."""
    first = index.key_before(target)
    yield first
    if first > 0:
        yield index.key_before(first - 1)
    yield None  # the start


def _decode_run(container, stream, index, start, pending, position, got) -> bool:
    """Seek to key frame ``start`` (None: the file's start) and decode forward, taking every pending frame met until
    the next one is far ahead. False when the seek landed after the first pending frame."""
    if start is None:
        container.seek(0, backward=True, any_frame=False)
    else:
        container.seek(index.pts[start], stream=stream, backward=True, any_frame=False)
    gap = 2 * max(1, len(index.keys) and (len(index) // len(index.keys)))  # about two GOPs: decode on, not seek
    for frame in container.decode(stream):
        i = position.get(frame.pts)
        if i is None:
            continue
        if i > pending[0] and pending[0] not in got:
            return False  # landed after the target
        if i == pending[0]:
            got[i] = frame.to_ndarray(format="rgb24")
            pending.pop(0)
            if not pending or pending[0] > i + gap:
                return True
    return bool(pending) is False
