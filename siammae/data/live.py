"""Live sources: standard input, stream URLs and cameras, read through PyAV (FFmpeg) as frames arrive.

A :class:`LiveSource` looks like a :class:`~siammae.data.video.VideoSource` to the tracker (``path``, ``width``,
``height``, ``fps``, iterating yields :class:`~siammae.data.video.Frame` objects) but has no end known in advance,
is read once, and can drop frames in real time instead of building a backlog. :func:`open_source` opens a path or
a live source, whichever it names.

Threads: one reader thread decodes the stream (and, given ``read(prepare)``, prepares each frame for the encoder in
the same thread), behind the bounded queue of :class:`siammae.background.BackgroundReader`; the consumer takes
frames from it. So a frame crosses one thread boundary between the decoder and the tracker.

Damage: a stream with garbage in it (a lost network packet, a corrupt stretch of a pipe) decodes on after the
damage, with frames missing. The reader numbers frames by their time stamps (so the frame after a gap keeps its
number in the source), counts corrupt packets and missing frames in ``gaps`` (:class:`Gaps`) and warns once per gap.

Standard input holding an MP4 / MOV whose index (``moov``) comes after the media data cannot be demuxed from a pipe
(the index is needed before the first frame). :func:`stdin_input` recognises it from its first bytes and copies the
stream to a temporary file before decoding: an unnamed one in TMPDIR (``O_TMPFILE``, or unlinked at once where the
system has no such flag), so that no name exists that a kill -9 while the pipe stalls could leave behind. With
``realtime`` it is an error naming the fix instead, since waiting for the whole stream is the opposite of real time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

from siammae.background import BackgroundReader
from siammae.data.video import Frame, VideoSource, _av, _video_stream
from siammae.errors import VideoError
from siammae.io import TMP_PREFIX

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "pipe:")
CAMERA_FORMATS = ("v4l2", "avfoundation", "dshow")
# FFmpeg probes 5 MB / 5 s of a stream before the first frame by default: seconds of delay on a live source, with
# the probed frames then arriving at once. Probe as little as possible instead (``options`` can override).
LIVE_OPTIONS = {"probesize": "32", "analyzeduration": "0"}


def is_live(source: str | os.PathLike, format: str | None = None) -> bool:
    """Whether ``source`` names a live source rather than a file or folder: ``-`` (standard input), a stream URL,
    a device (``/dev/video0``) or anything with a capture ``format`` (``v4l2``, ``avfoundation``, ``dshow``)."""
    s = str(source)
    return format is not None or s == "-" or s.startswith(LIVE_PREFIXES) or s.startswith("/dev/")


class Dropped:
    """Frames a real-time source skipped: their count and their indices as inclusive ranges ``[[a, b], ...]``
    (the first 1,000 ranges, so an endless stream does not grow it without bound)."""

    MAX_RANGES = 1000

    def __init__(self):
        self.count = 0
        self._ranges: list[list[int]] = []

    def add(self, index: int) -> None:
        self.count += 1
        if self._ranges and self._ranges[-1][1] == index - 1:
            self._ranges[-1][1] = index
        elif len(self._ranges) < self.MAX_RANGES:
            self._ranges.append([index, index])

    def ranges(self) -> list[list[int]]:
        return [list(r) for r in self._ranges]


class Gaps:
    """Damage found while reading a stream: ``corrupt_packets`` (packets the demuxer flagged as corrupt),
    ``count`` (jumps in the time stamps), ``frames_missing`` (frames those jumps skipped) and ``at``: up to 1,000
    ``[index of the first frame after the gap, frames missing]`` pairs."""

    MAX = 1000

    def __init__(self):
        self.corrupt_packets = 0
        self.count = 0
        self.frames_missing = 0
        self.at: list[list[int]] = []

    def add(self, index: int, missing: int) -> None:
        self.count += 1
        self.frames_missing += missing
        if len(self.at) < self.MAX:
            self.at.append([index, missing])

    def __bool__(self) -> bool:
        return bool(self.count or self.corrupt_packets)

    def as_dict(self) -> dict:
        return {"count": self.count, "frames_missing": self.frames_missing, "corrupt_packets": self.corrupt_packets,
                "at": [list(a) for a in self.at]}  # fmt: skip


# ------------------------------------------------------------------------------------------ standard input
_MP4_TOP = {b"ftyp", b"free", b"skip", b"wide", b"pdin", b"uuid", b"styp", b"sidx", b"prft"}  # before moov / mdat
_PEEK_LIMIT = 1 << 20  # a header box larger than this is not an MP4 prelude: decode the stream as it comes


class _Replay:
    """A binary stream that first replays ``head`` (bytes already read to sniff the format), then reads ``rest``."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out, self._head = self._head + self._rest.read(), b""
            return out
        if self._head:  # a short read is allowed: the head first, then the stream
            out, self._head = self._head[:n], self._head[n:]
            return out
        # read1: what the pipe has now (read(n) would wait for n bytes: seconds of latency on a slow stream)
        return getattr(self._rest, "read1", self._rest.read)(n)


class _FdReader:
    """Standard input read from its file descriptor with ``os.read``, not through ``sys.stdin.buffer``: a reader
    thread blocked in a read holds no lock of Python's, so the interpreter can exit (Ctrl-C) while it waits; through
    the BufferedReader, shutdown aborts with "could not acquire lock for <stdin>". ``read(n)`` returns what the pipe
    has, up to n bytes (a pipe's short read, as ``read1``)."""

    def __init__(self, fd: int):
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = []
            while chunk := os.read(self.fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        return os.read(self.fd, n)


def _read_exact(f, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = f.read(n - len(data))
        if not got:
            break
        data += got
    return data


def mp4_index_last(f) -> tuple[bool, bytes]:
    """Read MP4 top-level boxes from ``f`` until ``moov`` or ``mdat``: (True when ``mdat``, the media, comes first,
    so the stream cannot be demuxed without seeking; the bytes read). Not an MP4: (False, the bytes read)."""
    head = b""
    while len(head) < _PEEK_LIMIT:
        box = _read_exact(f, 8)
        head += box
        if len(box) < 8:
            return False, head
        size, kind = int.from_bytes(box[:4], "big"), box[4:]
        if kind == b"mdat":
            return True, head
        if kind == b"moov" or kind not in _MP4_TOP or (kind != b"ftyp" and head[4:8] != b"ftyp" and len(head) == 8):
            return False, head
        if size == 1:  # a 64-bit size follows the type
            large = _read_exact(f, 8)
            head += large
            size = int.from_bytes(large, "big") - 8
        if size < 8 or size - 8 > _PEEK_LIMIT:
            return False, head
        body = _read_exact(f, size - 8)
        head += body
        if len(body) < size - 8:
            return False, head
    return False, head


def stdin_input(stdin, realtime: bool):
    """What to open for ``-``, and whether it is a spooled copy: ``stdin`` replayed after its first bytes, or, for
    an MP4 whose index comes last, an unnamed temporary file holding the whole stream, at its start (closed, it is
    gone; a kill leaves nothing). See the module docstring."""
    index_last, head = mp4_index_last(stdin)
    if not index_last:
        return _Replay(head, stdin), False
    if realtime:
        raise VideoError(
            "-: an MP4 / MOV whose index (moov) is at its end cannot be read from a pipe as it arrives; send MPEG-TS "
            "or Matroska instead (ffmpeg -i in.mp4 -c copy -f mpegts -), or write the MP4 with -movflags +faststart"
        )
    warnings.warn(
        "-: an MP4 whose index (moov) is at its end cannot be decoded from a pipe; copying it to a temporary file "
        "first (pipe MPEG-TS, or an MP4 written with -movflags +faststart, to start at once)",
        stacklevel=3,
    )
    tmp = None
    try:
        tmp = tempfile.TemporaryFile(prefix=TMP_PREFIX + "stdin.", suffix=".mp4")  # noqa: SIM115 (the caller's)
        tmp.write(head)
        while chunk := stdin.read(1 << 20):
            tmp.write(chunk)
        tmp.seek(0)
    except OSError as e:
        if tmp is not None:
            tmp.close()
        raise VideoError(f"-: cannot copy the MP4 to a temporary file in {tempfile.gettempdir()} ({e})") from e
    return tmp, True


def check_format(format: str | None) -> None:
    """A VideoError naming ``--format`` when FFmpeg (this PyAV build) has no input format of that name."""
    if format is None:
        return
    known = _av().formats_available
    if format not in known:
        hint = ", ".join(f for f in (*CAMERA_FORMATS, "mpegts", "matroska", "mp4") if f in known)
        raise VideoError(f"--format {format}: not an input format this FFmpeg knows (e.g. {hint}; ffmpeg -formats)")


class LiveSource:
    """A live stream opened through PyAV (FFmpeg): ``-`` (standard input, e.g. MPEG-TS from a pipe), an
    ``rtsp://`` / ``http(s)://`` / ``udp://`` / ``srt://`` URL, or a camera (``/dev/video0`` with ``format="v4l2"``,
    ``"0"`` with ``avfoundation``, ``"video=Name"`` with ``dshow``).

    Frames are decoded in a reader thread as they arrive (module docstring); ``Frame.time`` is the stream's time
    stamp, ``Frame.arrival`` when it was decoded. realtime: never build a backlog: when the consumer is slower than
    the source, the reader keeps only the newest frame and drops the older one (``dropped``: count and indices), so a
    frame waits at most one frame in this source (frame 0, which the first mask belongs to, is never dropped);
    without it every frame is kept and a slow consumer holds the source back (a pipe blocks its writer; frames then
    wait there before they "arrive"). options: FFmpeg options (``LIVE_OPTIONS`` by default; e.g.
    ``{"rtsp_transport": "tcp"}``); timeout: seconds to wait for a network stream (a URL) to open or to send data
    before failing (a pipe or a camera may pause as long as it likes). max_frames / duration: stop after that many
    frames / seconds of stream time (wall-clock time when the stream has no time stamps). Iterate once.

    Attributes like :class:`VideoSource`: ``path`` (the source as given), ``is_folder`` (False), ``is_live``
    (True), ``width``, ``height``, ``fps`` (None when the stream states none), ``num_frames`` (``max_frames``);
    ``dropped`` (real time) and ``gaps`` (damage in the stream, :class:`Gaps`).
    """

    is_folder = False
    is_live = True

    def __init__(
        self,
        source: str,
        format: str | None = None,
        options: dict | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        duration: float | None = None,
        timeout: float = 10.0,
        stdin=None,
    ):
        if max_frames is not None and max_frames < 1:
            raise VideoError(f"max_frames must be >= 1, got {max_frames}")
        if duration is not None and duration <= 0:
            raise VideoError(f"duration must be > 0 seconds, got {duration}")
        self.path = str(source)
        self.realtime, self.max_frames, self.duration = realtime, max_frames, duration
        self.num_frames = max_frames
        self.dropped = Dropped() if realtime else None
        self.gaps = Gaps()
        av = _av()
        check_format(format)  # before reading a byte of the source
        url, spooled = self.path, False
        if self.path == "-":  # sniffed first: an MP4 with its index last needs a seekable copy
            url, spooled = stdin_input(stdin if stdin is not None else _FdReader(sys.stdin.fileno()), realtime)
        options = dict(options or {}) if spooled else {**LIVE_OPTIONS, **(options or {})}
        try:
            # timeout: (open, read) seconds for network protocols, so a dead server is an error, not a hang; a pipe
            # or a camera may pause as long as it likes (its writer ends it by closing)
            network = "://" in self.path
            self._container = av.open(url, format=format, options=options,
                                      timeout=(timeout, timeout) if network else None)  # fmt: skip
        except av.error.FFmpegError as e:
            if spooled:
                url.close()
            raise VideoError(f"{self.path}: cannot open live source ({e})") from e
        self._spool = url if spooled else None  # the unnamed copy: closed (and so gone) with the container
        stream = _video_stream(self.path, self._container)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        if not self.width or not self.height:
            self._close()
            raise VideoError(f"{self.path}: the stream states no frame size")
        self._used = False

    def __iter__(self) -> Iterator[Frame]:
        reader = self.read()
        try:
            yield from reader
        finally:
            reader.close()

    def read(self, prepare: Callable[[Frame], object] | None = None) -> BackgroundReader:
        """Start the reader thread: iterate the result for the frames, or for ``prepare(frame)`` of each (run in
        the reader thread, e.g. the encoder's resize), and close it when done. Once per source."""
        if self._used:
            raise VideoError(f"{self.path}: a live source can be read once")
        self._used = True
        items = self._frames() if prepare is None else map(prepare, self._frames())
        return BackgroundReader(items, maxsize=1 if self.realtime else 2, name="siammae-live",
                                drop_oldest=self.realtime, keep_first=True, on_drop=self._dropped,
                                join=False)  # fmt: skip # may wait on a silent pipe: it ends at its next frame

    def _dropped(self, item) -> None:
        frame = item if isinstance(item, Frame) else item[0]  # prepare's results start with their frame
        self.dropped.add(frame.index)

    def _frames(self) -> Iterator[Frame]:
        """Reader thread: decode frames as they arrive, numbered by time stamp, until the end or a limit."""
        av = _av()
        stream = self._container.streams.video[0]
        index, last_pts, step = -1, None, None
        t0 = first_time = None
        taken = 0
        try:
            for packet in self._container.demux(stream):
                if packet.is_corrupt:
                    self.gaps.corrupt_packets += 1
                    if self.gaps.corrupt_packets == 1:  # one warning: a damaged stream may flag thousands
                        warnings.warn(f"{self.path}: corrupt data in the stream after frame {index}", stacklevel=2)
                for vframe in packet.decode():
                    arrival = time.perf_counter()
                    index, last_pts, step = self._number(vframe.pts, index, last_pts, step)
                    stamp = vframe.time
                    t0 = arrival if t0 is None else t0
                    first_time = stamp if first_time is None else first_time
                    elapsed = stamp - first_time if stamp is not None and first_time is not None else arrival - t0
                    if self.duration is not None and elapsed >= self.duration:
                        return
                    yield Frame(index, f"{index:05d}", vframe.to_ndarray(format="rgb24"), stamp, arrival)
                    taken += 1
                    if self.max_frames is not None and taken >= self.max_frames:
                        return
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: the stream stopped at frame {index + 1} ({e})") from e
        finally:
            self._close()

    def _close(self) -> None:
        self._container.close()
        if self._spool is not None:
            self._spool.close()

    def _number(self, pts, index: int, last_pts, step):
        """(index, pts, step) of a frame with time stamp ``pts`` after frame ``index`` (time stamp ``last_pts``;
        ``step``: the smallest time-stamp step so far, one frame's duration): the next index, or after a jump of k
        steps the index k on (a gap of k - 1 frames, recorded and warned about)."""
        if pts is None or last_pts is None or pts <= last_pts:
            return index + 1, last_pts if pts is None else pts, step
        delta = pts - last_pts
        if step is None or delta < step:  # the first step, or a smaller one (the first was over a gap)
            return index + 1, pts, delta
        jump = max(1, round(delta / step))
        if jump >= 2:
            self.gaps.add(index + jump, jump - 1)
            warnings.warn(
                f"{self.path}: {jump - 1} frame(s) missing in the stream before frame {index + jump} (damaged or "
                "lost data); later frames keep their numbers in the source",
                stacklevel=2,
            )
        return index + jump, pts, step

    def __repr__(self) -> str:
        return f"LiveSource({self.path!r}, {self.width}x{self.height}, realtime={self.realtime})"


def open_source(source: str | os.PathLike, format: str | None = None, **live) -> VideoSource | LiveSource:
    """A video file or frame folder (:class:`VideoSource`), or a live source (:class:`LiveSource`, with ``live``
    its keyword arguments: realtime, max_frames, duration, options, timeout, stdin) when :func:`is_live` says so."""
    if is_live(source, format):
        return LiveSource(str(source), format=format, **live)
    return VideoSource(source)
