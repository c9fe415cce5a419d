"""Training data: frame pairs from videos and frame folders, the same crop and flip on both frames.

A sample is one video: it is opened once, ``repeat`` pairs (f1 past, f2 future, gap uniform in ``gap``) are drawn,
and only those frames are decoded (``read_frames`` seeks, so a long video is never decoded whole). Each pair gets
its own random-resized crop and flip, applied identically to both of its frames (paper, Appendix A).

Every random choice of a sample comes from a generator seeded by ``(seed, epoch, position in the epoch)``, never
from a worker's global state, so the batches are the same with any number of workers or processes and after a
resume. A video that cannot be read is replaced by another one drawn from the same seeded generator, and the
failure is reported back with the batch so that the main process can warn and count; a run never stops on a bad
file.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from siammae.data.frame_index import frame_index, read_indexed
from siammae.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_frame_files, read_frames
from siammae.data.video_decoders import read_frames_torchcodec, video_decoder
from siammae.errors import InputError, VideoError

MAX_ATTEMPTS = 16  # videos tried for one sample before the data set is declared unreadable
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue (SimCLR / MoCo strengths)


# ---------------------------------------------------------------------------------------------- finding videos
def find_videos(paths, option: str = "--data") -> list[str]:
    """Resolve ``paths`` (folders searched recursively, video files, frame folders, ``.txt`` lists of any of these,
    one per line, relative to the list file) to a sorted, de-duplicated list of clips. ``option``: how errors name
    where a path came from (``--data`` for siammae-train; "" for siammae-prepare's arguments).

    A folder that directly holds images is a frame-folder clip; its sub-folders are searched as well.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no training data given (--data FOLDER, a video file or a .txt list)")
    found: set[str] = set()
    for p in paths:
        found.update(_expand(p, 0, f"{option} " if option else ""))
    if not found:
        raise InputError(
            f"no videos or frame folders found in {', '.join(str(p) for p in paths)} "
            f"(videos: {', '.join(VIDEO_EXTENSIONS)}; frame folders: folders of {', '.join(IMAGE_EXTENSIONS)} files)"
        )
    return sorted(found)


def _expand(path: Path, depth: int, given: str = "--data ") -> list[str]:
    if not path.exists():
        raise InputError(f"{given}{path}: no such file or folder")
    if path.is_dir():
        return _scan(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return [str(path)]
    if suffix == ".txt":
        if depth > 0:
            raise InputError(f"{given}{path}: a list file cannot name another list file")
        out = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entry = Path(line) if Path(line).is_absolute() else path.parent / line
                out.extend(_expand(entry, depth + 1, given))
        return out
    raise InputError(f"{given}{path}: not a folder, a video ({', '.join(VIDEO_EXTENSIONS)}) or a .txt list of them")


def _scan(root: Path) -> list[str]:
    out, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files = [f for f in files if not f.startswith(".")]
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            out.append(folder)
        out.extend(os.path.join(folder, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS))
    return out


# ---------------------------------------------------------------------------------------------- augmentation
def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params`` on a seeded generator -> (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fallback as torchvision: a central crop at the closest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_square_box(height: int, width: int):
    """The central square (the no-augmentation view: short side resized to the crop size, centre crop)."""
    s = min(height, width)
    return (height - s) // 2, (width - s) // 2, s, s


def crop_resize(frames: list, box, size: int) -> torch.Tensor:
    """Crop ``box`` (top, left, h, w) from frames ((H, W, 3) uint8 arrays or (3, H, W) uint8 tensors) and resize
    -> (T, 3, size, size) uint8."""
    top, left, h, w = box
    if isinstance(frames[0], torch.Tensor):
        x = torch.stack([f[:, top : top + h, left : left + w] for f in frames])  # (T, 3, h, w)
    else:  # np.stack copies the crops: decoders may hand out read-only arrays
        x = torch.from_numpy(np.stack([f[top : top + h, left : left + w] for f in frames])).permute(0, 3, 1, 2)
    return resize_square(x, size)


def frame_size(frame) -> tuple[int, int]:
    """(H, W) of an (H, W, 3) array or a (3, H, W) tensor."""
    return tuple(frame.shape[1:]) if isinstance(frame, torch.Tensor) else tuple(frame.shape[:2])


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(T, 3, h, w) uint8 -> (T, 3, size, size) uint8, bilinear with antialiasing (torchvision's RandomResizedCrop).

    On the CPU, PyTorch resizes uint8 images directly (its SIMD path: 4x faster than through float); elsewhere
    through float, rounded. The two agree to within one level.
    """
    if tuple(x.shape[-2:]) != (size, size):
        if x.device.type == "cpu":
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        else:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


def color_jitter(x: torch.Tensor, rng: np.random.Generator, strength=COLOR_JITTER) -> torch.Tensor:
    """The same brightness / contrast / saturation / hue jitter on every frame of x (T, 3, S, S) uint8."""
    from torchvision.transforms.v2 import functional as TF  # only the colour ablation needs torchvision

    b, c, s, h = strength
    x = TF.adjust_brightness(x, float(rng.uniform(1 - b, 1 + b)))
    x = TF.adjust_contrast(x, float(rng.uniform(1 - c, 1 + c)))
    x = TF.adjust_saturation(x, float(rng.uniform(1 - s, 1 + s)))
    return TF.adjust_hue(x, float(rng.uniform(-h, h)))


def apply_view(pair: list, box, flip: bool, size: int) -> torch.Tensor:
    """One pair's view on both of its frames: crop ``box`` (top, left, h, w), resize to ``size``, flip if ``flip``
    -> (2, 3, size, size) uint8. The one crop-and-flip of training: the CPU path (:meth:`PairSampling.views`) and
    the device path (:func:`siammae.train.prepared_data.decode_views`) both call it."""
    x = crop_resize(pair, box, size)  # (2, 3, size, size)
    return x.flip(-1) if flip else x


# ---------------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class SampleKey:
    """What the sampler hands the dataset: which video, and where in which epoch (the seed of every choice)."""

    video: int
    epoch: int
    position: int


class PairSampling(torch.utils.data.Dataset, ABC):
    """The sampling of training pairs, whatever stores the clips; ``dataset[SampleKey]`` -> dict(f1, f2 (repeat, 3,
    S, S) uint8, skipped, short).

    A subclass says what a clip is: ``__len__``, :meth:`path` (its name in messages), :meth:`num_frames` and
    :meth:`read` (frames as (H, W, 3) arrays or (3, H, W) tensors). The draws are made here, in one order: the
    ``repeat`` pairs (:meth:`draw_pairs`), then per pair its view (:meth:`draw_view`) and, with colour
    augmentation, its jitter; so every subclass gives the same pairs for the same key.

    ``skipped`` lists ``(path, reason)`` of the clips that failed for this sample; ``short`` counts pairs drawn
    from clips shorter than the minimum gap, which use their largest possible gap (``num_frames - 1``) instead.
    A clip with fewer than 2 frames is skipped as unreadable.
    """

    def __init__(self, size: int, seed: int, gap=(4, 48), repeat: int = 2, crop_scale=(0.5, 1.0),
                 augment: str = "spatial"):  # fmt: skip
        self.size, self.seed, self.gap, self.repeat = size, seed, tuple(gap), repeat
        self.crop_scale, self.augment = tuple(crop_scale), augment

    # --- what a subclass provides
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def path(self, i: int) -> str: ...

    @abstractmethod
    def num_frames(self, i: int) -> int: ...

    @abstractmethod
    def read(self, video: int, indices: list[int]) -> list: ...

    # --- the sampling
    def __getitem__(self, key: SampleKey) -> dict:
        rng = np.random.default_rng([self.seed, key.epoch, key.position])
        skipped = []
        video = key.video
        for _ in range(MAX_ATTEMPTS):
            try:
                return {**self._sample(video, rng), "skipped": skipped}
            except (VideoError, OSError) as e:
                skipped.append((self.path(video), str(e).splitlines()[0] if str(e) else type(e).__name__))
                video = int(rng.integers(len(self)))  # a replacement drawn from the same seeded stream
        tried = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise InputError(f"{MAX_ATTEMPTS} videos in a row could not be read, is the data readable? ({tried})")

    def draw_pairs(self, video: int, rng: np.random.Generator) -> tuple[list[tuple[int, int]], int]:
        """The ``repeat`` frame pairs (t1, t2) of a sample and the count of short ones (the first draws of ``rng``)."""
        n = self.num_frames(video)
        if n < 2:
            raise VideoError(f"{self.path(video)}: {n} frame(s), a pair needs at least 2")
        lo, hi = self.gap
        pairs, short = [], 0
        for _ in range(self.repeat):
            if n - 1 < lo:
                gap, short = n - 1, short + 1
            else:
                gap = int(rng.integers(lo, min(hi, n - 1) + 1))
            t1 = int(rng.integers(0, n - gap))
            pairs.append((t1, t1 + gap))
        return pairs, short

    def draw_view(self, rng: np.random.Generator, height: int, width: int):
        """The crop box (top, left, h, w) and flip of one pair (the draws after :meth:`draw_pairs`)."""
        if self.augment in ("spatial", "both"):
            return random_resized_crop_box(rng, height, width, self.crop_scale), bool(rng.random() < 0.5)
        return center_square_box(height, width), False

    def views(self, frames: list, rng: np.random.Generator):
        """Decoded frames of the pairs (f1 f2 of pair 0, f1 f2 of pair 1, ...) -> f1, f2 (repeat, 3, S, S) uint8,
        each pair with its own view (and jitter), the same on both of its frames."""
        height, width = frame_size(frames[0])
        f1, f2 = [], []
        for k in range(self.repeat):
            box, flip = self.draw_view(rng, height, width)
            x = apply_view(frames[2 * k : 2 * k + 2], box, flip, self.size)  # (2, 3, S, S)
            if self.augment in ("color", "both"):
                x = color_jitter(x, rng)
            f1.append(x[0])
            f2.append(x[1])
        return torch.stack(f1), torch.stack(f2)

    def _sample(self, video: int, rng: np.random.Generator) -> dict:
        """Draw ``repeat`` pairs from one clip, read and decode only their frames -> dict(f1, f2, short)."""
        pairs, short = self.draw_pairs(video, rng)
        frames = self.read(video, [t for pair in pairs for t in pair])
        if any(f.shape != frames[0].shape for f in frames):
            shapes = ", ".join(sorted({str(tuple(f.shape)) for f in frames}))
            raise VideoError(f"{self.path(video)}: frames differ in size ({shapes})")
        f1, f2 = self.views(frames, rng)
        return {"f1": f1, "f2": f2, "short": short}


class PairDataset(PairSampling):
    """Training pairs from videos and frame folders (:func:`find_videos`); only the frames of the pairs are
    decoded. A video file is read through its frame index (:mod:`siammae.data.frame_index`: the frames that
    decode, found by their timestamps, whatever the header's count or the frame rate), built once per file and
    cached; torchcodec reads the same frames when it is chosen (``SIAMMAE_VIDEO_DECODER``,
    :mod:`siammae.data.video_decoders`)."""

    def __init__(self, videos: list[str], size: int, seed: int, gap=(4, 48), repeat: int = 2, crop_scale=(0.5, 1.0),
                 augment: str = "spatial"):  # fmt: skip
        if not videos:
            raise InputError("the training data set is empty")
        super().__init__(size, seed, gap, repeat, crop_scale, augment)
        # a numpy bytes array, not a list of str: forked workers reading a Python list touch every object's
        # refcount and so copy the list's pages, once per worker (pytorch/pytorch#13246)
        self.videos = np.array([v.encode() for v in videos])
        self._counts: dict[int, int] = {}  # frame counts, filled lazily (per worker process)
        self.decoder = video_decoder()

    def __len__(self) -> int:
        return len(self.videos)

    def path(self, i: int) -> str:
        return self.videos[i].decode()

    def num_frames(self, i: int) -> int:
        """Frames that decode (a frame folder: its image files; a video: its frame index, not the header)."""
        n = self._counts.get(i)
        if n is None:
            path = self.path(i)
            n = self._counts[i] = len(list_frame_files(Path(path))) if os.path.isdir(path) else len(frame_index(path))
        return n

    def read(self, video: int, indices: list[int]) -> list:
        """Frames ``indices`` of clip ``video``: (H, W, 3) uint8 arrays (or (3, H, W) tensors, see crop_resize)."""
        path = self.path(video)
        if os.path.isdir(path):
            return read_frames(path, indices)
        if self.decoder == "torchcodec":
            return read_frames_torchcodec(path, indices)
        return read_indexed(path, indices)


def collate(samples: list[dict]) -> dict:
    """Concatenate samples (video-major: video 0 pair 0, video 0 pair 1, ...) -> f1, f2 (B * repeat, 3, S, S)."""
    return {
        "f1": torch.cat([s["f1"] for s in samples]),
        "f2": torch.cat([s["f2"] for s in samples]),
        "skipped": [x for s in samples for x in s["skipped"]],
        "short": sum(s["short"] for s in samples),
    }
