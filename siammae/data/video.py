"""Reading and writing videos: a video file (PyAV, streamed) or a folder of frames, one interface.

Nothing here holds more than the frame being decoded: iterating a :class:`VideoSource` decodes one frame at a time,
so a video of any length is read in constant memory. Training needs a few frames at arbitrary positions instead;
:func:`read_frames` seeks to the nearest key frame before each and decodes forward only as far as needed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from siammae.errors import VideoError
from siammae.io import atomic_write

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".mov",
    ".webm",
    ".avi",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".ts",
    ".3gp",
    ".wmv",
    ".ogv",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` from 0, ``name`` (file stem for folders, ``f"{index:05d}"`` for videos), and
    ``rgb`` an (H, W, 3) uint8 array. ``time``: its presentation time in seconds from the stream (None for folders
    and arrays); ``arrival``: ``time.perf_counter()`` when it was decoded, the start of its latency."""

    index: int
    name: str
    rgb: np.ndarray
    time: float | None = None
    arrival: float | None = None


def _av():
    import av  # deferred: PyAV loads FFmpeg, which only the video paths need

    return av


def list_frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; a VideoError that names the file when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (asarray views PIL's read-only buffer)
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(f"{path}: cannot decode image ({e})") from e


def _check_source(path: Path) -> bool:
    """True for a frame folder, False for a file with a video extension; a VideoError otherwise."""
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return True
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoError(f"{path}: not a video file or frame folder (video extensions: {', '.join(VIDEO_EXTENSIONS)})")
    return False


def _frame_files(folder: Path) -> list[Path]:
    """The frames of a folder; a VideoError when it has none."""
    files = list_frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: folder has no frames ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _video_stream(path: Path, container):
    """The first video stream of an open container; a VideoError when there is none."""
    if not container.streams.video:
        raise VideoError(f"{path}: the file has no video stream")
    return container.streams.video[0]


class VideoSource:
    """A video file or a frame folder, opened for streaming.

    Attributes: ``path``, ``is_folder``, ``width``, ``height``, ``fps`` (None for folders), ``num_frames`` (the
    container's count for files, which some formats lack: then None). Iterating yields :class:`Frame` objects in
    order; a decoding error ends the iteration with a :class:`VideoError` that says at which frame it stopped,
    after every frame before it has been yielded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.is_folder = _check_source(self.path)
        if self.is_folder:
            self._files = _frame_files(self.path)
            first = read_image(self._files[0])
            self.height, self.width = first.shape[:2]
            self.fps = None
            self.num_frames = len(self._files)
            return
        av = _av()
        try:
            with av.open(str(self.path)) as container:
                stream = _video_stream(self.path, container)
                self.width = stream.codec_context.width
                self.height = stream.codec_context.height
                self.fps = float(stream.average_rate) if stream.average_rate else None
                self.num_frames = stream.frames or None
                # containers without a frame count (mkv, webm) still state a duration: enough to notice truncation
                self._expected = self.num_frames
                if self._expected is None and container.duration and self.fps:
                    self._expected = int(round(container.duration / 1e6 * self.fps))
        except av.error.EOFError as e:
            raise VideoError(f"{self.path}: the file ends before its first frame (an empty or truncated video)") from e
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: cannot open video ({e})") from e
        if not self.width or not self.height:
            raise VideoError(f"{self.path}: video stream has no frame size (corrupt header?)")

    def __iter__(self) -> Iterator[Frame]:
        if self.is_folder:
            for i, f in enumerate(self._files):
                rgb = read_image(f)
                if rgb.shape[:2] != (self.height, self.width):
                    raise VideoError(
                        f"{f}: frame is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is {self.width}x{self.height}"
                    )
                yield Frame(i, f.stem, rgb, arrival=time.perf_counter())
            return
        yield from self._decode()

    def _decode(self) -> Iterator[Frame]:
        av = _av()
        index = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    yield Frame(index, f"{index:05d}", rgb, frame.time, time.perf_counter())
                    index += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: decoding stopped at frame {index} ({e})") from e
        # A truncated file ends the demuxer quietly; the header says how many frames there should have been
        # (exactly for a frame count, within a frame of rounding for a duration).
        slack = 0 if self.num_frames else 1
        if index == 0 and not (self._expected or 0) > slack:
            raise VideoError(f"{self.path}: the video has no decodable frames")
        if self._expected is not None and index < self._expected - slack:
            raise VideoError(
                f"{self.path}: decoding stopped at frame {index} of {self._expected} (file truncated or corrupt)"
            )

    def __repr__(self) -> str:
        kind = "folder" if self.is_folder else "video"
        return f"VideoSource({kind} {str(self.path)!r}, {self.width}x{self.height}, frames={self.num_frames})"


def open_video(path: str | os.PathLike) -> VideoSource:
    """Open a video file or a frame folder for streaming (see :class:`VideoSource`)."""
    return VideoSource(path)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames; uses the container's count when it has one, else demuxes packets (no decoding)."""
    src = VideoSource(path)
    if src.num_frames is not None:
        return src.num_frames
    av = _av()
    try:
        with av.open(str(src.path)) as container:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src.path}: cannot count frames ({e})") from e


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> list[np.ndarray]:
    """Frames at ``indices`` (any order, repeats allowed) as (H, W, 3) uint8 arrays, in the order asked.

    For a video file, each run of wanted frames starts with a seek to the key frame before it, so a pair of frames
    from a long video costs two short decodes, not the whole video. Frame ``i`` is the one whose presentation time
    is ``start + i / fps``.
    """
    indices = [int(i) for i in indices]
    path = Path(path)
    wanted = sorted(set(indices))
    if wanted and wanted[0] < 0:
        raise VideoError(f"{path}: frame index {wanted[0]} is negative")
    # one pass over the source: no VideoSource (it would open the container, or decode a frame, for metadata)
    if _check_source(path):
        files = _frame_files(path)
        if wanted and wanted[-1] >= len(files):
            raise VideoError(f"{path}: frame {wanted[-1]} asked but the folder has {len(files)} frames")
        got = {i: read_image(files[i]) for i in wanted}
        return [got[i] for i in indices]
    av = _av()
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(path, container)
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise VideoError(f"{path}: video has no frame rate, cannot seek")
            tb = stream.time_base
            start = stream.start_time or 0
            to_pts = lambda i: start + int(round(i / (rate * tb)))  # noqa: E731
            to_index = lambda pts: int(round((pts - start) * tb * rate))  # noqa: E731
            pending = list(wanted)  # sorted, unique; every pass of the loop below takes at least one off
            while pending:
                # the seek lands on the key frame at or before the target, which may be many seconds earlier
                container.seek(to_pts(pending[0]), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    i = to_index(frame.pts)
                    if i < pending[0]:
                        continue
                    if i > pending[0]:  # passed over a wanted frame without seeing it (rounding of pts)
                        raise VideoError(f"{path}: frame {pending[0]} not found when seeking")
                    got[i] = frame.to_ndarray(format="rgb24")
                    pending.pop(0)
                    # the next wanted frame is far ahead: seeking to it is cheaper than decoding up to it
                    if not pending or pending[0] > i + 2 * _keyframe_gap_guess(rate):
                        break
                else:
                    if pending:
                        raise VideoError(f"{path}: frame {pending[0]} asked but the video ends before it")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed while reading frames {wanted} ({e})") from e
    return [got[i] for i in indices]


def _keyframe_gap_guess(rate) -> int:
    """Frames worth decoding forward rather than seeking again (about 2 s of video, a typical GOP)."""
    return max(1, int(2 * float(rate)))


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0, crf: int = 20) -> int:
    """Encode (H, W, 3) uint8 RGB frames to an h264 file atomically; returns the number of frames written.

    Odd frame sizes are padded by one pixel (yuv420p needs even sides). The file appears only once complete.
    """
    av = _av()
    path = Path(path)
    n = 0
    with atomic_write(path) as tmp:
        container = av.open(str(tmp), mode="w")
        try:
            stream = None
            for rgb in frames:
                if stream is None:
                    h, w = rgb.shape[:2]
                    stream = container.add_stream("libx264", rate=_fps_fraction(fps))
                    stream.width, stream.height = w + (w % 2), h + (h % 2)
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                if rgb.shape[0] != stream.height or rgb.shape[1] != stream.width:
                    rgb = np.pad(rgb, ((0, stream.height - rgb.shape[0]), (0, stream.width - rgb.shape[1]), (0, 0)))
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    container.mux(packet)
                n += 1
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        finally:
            container.close()
        if n == 0:
            raise ValueError(f"{path}: no frames to write")
    return n


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


# --------------------------------------------------------------------------------------------------- live
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
    frame waits at most one frame in this source; without it every frame is kept and a slow consumer holds the
    source back (a pipe blocks its writer; frames then wait there before they "arrive"). options: FFmpeg options
    (``LIVE_OPTIONS`` by default; e.g. ``{"rtsp_transport": "tcp"}``); timeout: seconds to wait for the stream to
    open or for data on a network stream before failing. max_frames / duration: stop after that many frames /
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
            # timeout: (open, read) seconds for network protocols, so a dead server is an error, not a hang
            self._container = av.open(url, format=format, options={**LIVE_OPTIONS, **(options or {})},
                                      timeout=(timeout, timeout))  # fmt: skip
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
                if self.realtime:
                    try:
                        old = slot.get_nowait()  # the consumer has not taken it yet: too slow, drop it
                        self.dropped.add(old[0])
                    except queue.Empty:
                        pass
                    slot.put_nowait(entry)
                elif not _put(slot, entry, stop):
                    return
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
