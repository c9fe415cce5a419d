"""Live sources: standard input, stream URLs and cameras, read through PyAV (FFmpeg) as frames arrive.

A :class:`LiveSource` looks like a :class:`~siammae.data.video.VideoSource` to the tracker (``path``, ``width``,
``height``, ``fps``, iterating yields :class:`~siammae.data.video.Frame` objects) but has no end known in advance,
is read once, and can drop frames in real time instead of building a backlog. :func:`open_source` opens a path or
a live source, whichever it names.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator

from siammae.data.video import Frame, VideoSource, _av, _video_stream
from siammae.errors import VideoError

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


class LiveSource:
    """A live stream opened through PyAV (FFmpeg): ``-`` (standard input, e.g. MPEG-TS from a pipe), an
    ``rtsp://`` / ``http(s)://`` / ``udp://`` / ``srt://`` URL, or a camera (``/dev/video0`` with ``format="v4l2"``,
    ``"0"`` with ``avfoundation``, ``"video=Name"`` with ``dshow``).

    Frames are decoded in a reader thread of their own as they arrive; ``Frame.time`` is the stream's time stamp,
    ``Frame.arrival`` when it was decoded. realtime: never build a backlog: when the consumer is slower than the
    source, the reader keeps only the newest frame and drops the older one (``dropped``: count and indices), so a
    frame waits at most one frame in this source (frame 0, which the first mask belongs to, is never dropped);
    without it every frame is kept and a slow consumer holds the source back (a pipe blocks its writer; frames then
    wait there before they "arrive"). options: FFmpeg options
    (``LIVE_OPTIONS`` by default; e.g. ``{"rtsp_transport": "tcp"}``); timeout: seconds to wait for a network
    stream (a URL) to open or to send data before failing. max_frames / duration: stop after that many frames /
    seconds of stream time (wall-clock time when the stream has no time stamps). Iterate once.

    Attributes like :class:`VideoSource`: ``path`` (the source as given), ``is_folder`` (False), ``is_live``
    (True), ``width``, ``height``, ``fps`` (None when the stream states none), ``num_frames`` (``max_frames``).
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
    ):
        if max_frames is not None and max_frames < 1:
            raise VideoError(f"max_frames must be >= 1, got {max_frames}")
        if duration is not None and duration <= 0:
            raise VideoError(f"duration must be > 0 seconds, got {duration}")
        self.path = str(source)
        self.realtime, self.max_frames, self.duration = realtime, max_frames, duration
        self.num_frames = max_frames
        self.dropped = Dropped() if realtime else None
        av = _av()
        url = "pipe:0" if self.path == "-" else self.path
        try:
            # timeout: (open, read) seconds for network protocols, so a dead server is an error, not a hang; a pipe
            # or a camera may pause as long as it likes (its writer ends it by closing)
            network = "://" in self.path
            self._container = av.open(url, format=format, options={**LIVE_OPTIONS, **(options or {})},
                                      timeout=(timeout, timeout) if network else None)  # fmt: skip
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: cannot open live source ({e})") from e
        stream = _video_stream(self.path, self._container)
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        if not self.width or not self.height:
            self._container.close()
            raise VideoError(f"{self.path}: the stream states no frame size")
        self._used = False

    def __iter__(self) -> Iterator[Frame]:
        if self._used:
            raise VideoError(f"{self.path}: a live source can be read once")
        self._used = True
        slot: queue.Queue = queue.Queue(maxsize=1 if self.realtime else 2)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(slot, stop), name="siammae-live", daemon=True)
        reader.start()
        t0 = first_time = None
        taken = 0
        try:
            while True:
                entry = _get(slot, stop)
                if entry is None:
                    return
                if isinstance(entry, BaseException):
                    raise entry
                index, vframe, arrival = entry
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
        finally:
            stop.set()  # the reader ends at its next frame and closes the container; never joined here, as it may
            # wait on a silent pipe or socket (a daemon thread; the network timeout ends it)

    def _read(self, slot: queue.Queue, stop: threading.Event) -> None:
        """Reader thread: decode frames as they arrive into ``slot``; in real time replace a waiting frame."""
        av = _av()
        index = 0
        try:
            stream = self._container.streams.video[0]
            for vframe in self._container.decode(stream):
                if stop.is_set():
                    return
                entry = (index, vframe, time.perf_counter())
                index += 1
                if self.realtime and entry[0] > 0:  # frame 0 is never dropped: the first mask belongs to it
                    try:
                        old = slot.get_nowait()  # the consumer has not taken it yet: too slow, drop it
                        self.dropped.add(old[0])
                    except queue.Empty:
                        pass
                    slot.put_nowait(entry)
                elif not _put(slot, entry, stop):
                    return
                if self.realtime and entry[0] == 0:  # no later frame may push frame 0 out of the slot
                    while not slot.empty() and not stop.is_set():
                        time.sleep(0.002)
            _put(slot, None, stop)
        except av.error.FFmpegError as e:
            _put(slot, VideoError(f"{self.path}: the stream stopped at frame {index} ({e})"), stop)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, which raises it
            _put(slot, e, stop)
        finally:
            self._container.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.path!r}, {self.width}x{self.height}, realtime={self.realtime})"


def _put(q: queue.Queue, entry, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(entry, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def open_source(source: str | os.PathLike, format: str | None = None, **live) -> VideoSource | LiveSource:
    """A video file or frame folder (:class:`VideoSource`), or a live source (:class:`LiveSource`, with ``live``
    its keyword arguments: realtime, max_frames, duration, options, timeout) when :func:`is_live` says so."""
    if is_live(source, format):
        return LiveSource(str(source), format=format, **live)
    return VideoSource(source)
