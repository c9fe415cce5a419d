"""Reading and writing videos: a video file (PyAV, streamed) or a folder of frames, one interface.

Nothing here holds more than the frame being decoded: iterating a :class:`VideoSource` decodes one frame at a time,
so a video of any length is read in constant memory. Training needs a few frames at arbitrary positions instead;
:func:`read_frames` seeks to the nearest key frame before each and decodes forward only as far as needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from siammae.data.images import open_image, upright
from siammae.errors import VideoError, cause
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
# containers that take the h264 stream write_video makes (WebM and Ogg do not)
WRITABLE_VIDEO_EXTENSIONS = tuple(e for e in VIDEO_EXTENSIONS if e not in (".webm", ".ogv"))


def check_video_output(path: str | os.PathLike, what: str = "output video") -> Path:
    """``path`` when :func:`write_video` can write it (its extension names an h264 container); an InputError
    before any work otherwise."""
    path = Path(path)
    if path.suffix.lower() not in WRITABLE_VIDEO_EXTENSIONS:
        raise VideoError(
            f"{what} {path}: cannot write a video with extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(WRITABLE_VIDEO_EXTENSIONS)}"
        )
    return path


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


def images_by_stem(folder: Path, duplicate) -> dict[str, Path]:
    """The image files of ``folder`` by file stem, in name order (hidden files left out). Two files of one stem
    (``00001.jpg`` and ``00001.png``: which one is frame 00001 is not for us to guess) raise
    ``duplicate(stem, first, second)``, an exception naming both."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise duplicate(p.stem, by_stem[p.stem], p)
        by_stem[p.stem] = p
    return by_stem


def list_frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, sorted by name; a VideoError when two share a name."""
    return list(
        images_by_stem(
            folder,
            lambda stem, a, b: VideoError(f"{folder}: two frames named {stem!r} ({a.name} and {b.name}); keep one"),
        ).values()
    )


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8 RGB. 16-bit and float grey levels are scaled to 0..255 by their range
    (0..65535, or the data's own for values outside it), not clipped to white as ``convert("RGB")`` would."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        in_16_bits = im.mode != "F" and a.size and a.min() >= 0 and a.max() <= 65535
        lo, hi = (0.0, 65535.0) if in_16_bits else (a.min(), a.max())
        grey = np.round((a - lo) * (255.0 / max(hi - lo, 1e-12))).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))  # a writable copy (asarray views PIL's read-only buffer)


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB as displayed (its EXIF orientation applied, as ``cv2.imread`` does; see
    :mod:`siammae.data.images`); a VideoError that names the file when it cannot be decoded or is too large."""
    try:
        with open_image(path, VideoError) as im:
            return _to_rgb(upright(im))
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, VideoError):
            raise
        raise VideoError(f"{path}: cannot decode image ({cause(e, path)})") from e


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
            raise VideoError(f"{self.path}: cannot open video ({cause(e, self.path)})") from e
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
            raise VideoError(f"{self.path}: decoding stopped at frame {index} ({cause(e, self.path)})") from e
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
        raise VideoError(f"{src.path}: cannot count frames ({cause(e, src.path)})") from e


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> list[np.ndarray]:
    """Frames at ``indices`` (any order, repeats allowed) as (H, W, 3) uint8 arrays, in the order asked.

    Frame ``i`` is the ``i``-th frame that decodes. A video file is read through its frame index
    (:mod:`siammae.data.frame_index`): each run of wanted frames starts with a seek to the key frame before it, so a
    pair of frames from a long video costs two short decodes, not the whole video, and variable frame rates or a
    header's wrong frame count change nothing.
    """
    from siammae.data.frame_index import read_indexed

    indices = [int(i) for i in indices]
    path = Path(path)
    wanted = sorted(set(indices))
    if wanted and wanted[0] < 0:
        raise VideoError(f"{path}: frame index {wanted[0]} is negative")
    if not _check_source(path):
        return read_indexed(path, indices)
    files = _frame_files(path)
    if wanted and wanted[-1] >= len(files):
        raise VideoError(f"{path}: frame {wanted[-1]} asked but the folder has {len(files)} frames")
    got = {i: read_image(files[i]) for i in wanted}
    return [got[i] for i in indices]


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0, crf: int = 20) -> int:
    """Encode (H, W, 3) uint8 RGB frames to an h264 file atomically; returns the number of frames written.

    Odd frame sizes are padded by one pixel (yuv420p needs even sides). The file appears only once complete.
    """
    av = _av()
    path = check_video_output(path)
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
