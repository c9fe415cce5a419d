"""The one path from frames to masks and keypoints: frames -> encoder input -> features -> soft labels -> read-out.

:class:`Tracker` is the library's one predictor (as SAM 2 has one video predictor): tracking runs
(:mod:`siammae.tracking.run`), evaluation (:class:`~siammae.evaluation.runner.Runner`) and keypoint propagation all
stream frames through it, so for the same preset and size they encode the same frames to the same tensors and give
the same masks:

    decode + resize (inputs.py; a reader thread with ``prefetch``) --(bounded queue)--> chunk --encoder-->
    (T, h, w, D) --Propagator--> (T, C, h, w) --> masks / keypoints

Two options compose what a run needs, instead of a subclass: ``prefetch`` decodes and resizes in a background
thread (:class:`~siammae.background.BackgroundReader`, at most ``2 * chunk`` frames ahead; a live source decodes in
its own reader thread, :meth:`~siammae.data.live.LiveSource.read`), and a timer passed to :meth:`Tracker.stream`
(``tracking.report.StageTimes``) receives each stage's busy seconds.

The encoder is any :class:`~siammae.propagation.features.FrameEncoder`: a SiamMAE / ViTEncoder (wrapped in a
``TorchEncoder`` with the preset's normalisation), or an ONNX / TensorRT runtime (``siammae.export.load_encoder``).
At most one chunk of frames, its features and the propagator's bounded state exist at a time.

Objects are numbered by their mask ids, which are preserved. Inside, the propagation engine works on channels
0..K (background first, then each object id in the order it was first given); ``object_ids`` maps channels back.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn as nn

from siammae.background import BackgroundReader
from siammae.data.live import LiveSource
from siammae.data.masks import check_objects, fit_mask, read_mask
from siammae.data.video import Frame, VideoSource, open_video, read_image
from siammae.errors import InputError
from siammae.model.packaged import input_scale
from siammae.propagation.config import Preset, get_preset
from siammae.propagation.engine import Propagator
from siammae.propagation.features import FrameEncoder, TorchEncoder
from siammae.propagation.heatmaps import heatmaps_to_keypoints, keypoints_to_heatmaps
from siammae.propagation.inputs import chunks, resize_frame, to_batch
from siammae.propagation.labels import (
    crw_first_labels,
    crw_palette,
    crw_palette_ids,
    labels_to_mask,
    mask_to_labels,
    one_hot,
)

MaskLike = np.ndarray | str | os.PathLike
DEFAULT_CHUNK = 8  # frames per encoder call; 1 for a real-time live source (a chunk would wait for its frames)


class Timer(Protocol):
    """Where a stream adds its stages' busy seconds (``decode``, ``encode``, ``propagate``) and counts its frames:
    ``tracking.report.StageTimes``."""

    frames: int

    def add(self, stage: str, seconds: float) -> None: ...


@dataclass
class Tracked:
    """One frame of a propagation stream.

    frame: the decoded frame (index, name, rgb). soft: (C, h, w) fp32 soft labels at patch resolution, on the
    driver's device; channel c is object ``object_ids[c]``. given: the (H, W) id map given for this frame (frame
    0's mask, or a later mask adding objects), else None.
    """

    frame: Frame
    soft: torch.Tensor
    given: np.ndarray | None
    object_ids: np.ndarray  # (C,) uint8, channel -> object id; a snapshot (later masks add channels)


@dataclass
class _Objects:
    """The objects of a run: ``ids`` (C,) uint8, channel -> object id (set by frame 0's labels), and ``lut``,
    object id -> channel."""

    ids: np.ndarray | None = None
    lut: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))

    def add(self, found) -> None:
        """New channels for the ids of a later mask that are not objects yet."""
        new = [i for i in found if i not in self.ids]
        if new:
            self.lut[new] = np.arange(len(self.ids), len(self.ids) + len(new))
            self.ids = np.concatenate([self.ids, np.asarray(new, dtype=np.uint8)])


class Tracker:
    """Propagate first-frame labels through a video with an encoder and a preset, in constant memory.

    model: a SiamMAE / ViTEncoder (wrapped in a :class:`~siammae.propagation.features.TorchEncoder` that normalises
        as the preset does), or any :class:`~siammae.propagation.features.FrameEncoder` (ONNX / TensorRT runtimes),
        used as is.
    preset: a preset name (``siammae.propagation.preset_names()``) or a :class:`~siammae.propagation.config.Preset`;
        None: the default of the "masks" task. It fixes the propagation constants and the input rule
        (:mod:`siammae.propagation.inputs`). ``overrides`` replace propagation fields (``topk=7``, ...).
    size: the one input override: a short side (int, ``"480"``) or a fixed size (``(480, 880)``, ``"480x880"``);
        None keeps the preset's.
    ``self.preset`` is the resolved :class:`~siammae.propagation.config.Preset` (overrides and size applied);
    ``self.config`` and ``self.inputs`` are its propagation constants and input rule.
    device, dtype: for a PyTorch model ("auto" | "cpu" | "cuda"; "fp32" | "fp16" | "bf16").
    chunk: frames encoded together, and propagated with one top-k call (no effect on the results); None:
        :data:`DEFAULT_CHUNK`, and 1 for a live source read in real time (:meth:`chunk_for`).
    backend: kernel backend of the propagation engine ("auto" | "triton" | "torch").
    prefetch: decode and resize in a background thread, ahead of the encoder (no effect on the results).
    """

    def __init__(
        self,
        model,
        preset: str | Preset | None = None,
        device: str | torch.device = "auto",
        dtype: str = "fp32",
        size=None,
        chunk: int | None = None,
        backend: str = "auto",
        prefetch: bool = True,
        **overrides,
    ):
        self.preset = get_preset(preset, size=size, **overrides)
        scale = input_scale(model) if self.preset.size is None else None
        if scale is not None:  # weights measured at another scale of the preset's size (siammae-cpu: half)
            self.preset = self.preset.scaled(scale)
        self.config = self.preset.propagation
        self.inputs = self.preset.inputs
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise InputError(f"chunk must be an integer >= 1, got {chunk!r}")
        mean, std = self.inputs.mean, self.inputs.std
        if isinstance(model, nn.Module):
            try:
                self.encoder = TorchEncoder(
                    model, device=device, dtype=dtype, mean=mean, std=std, attention=self.preset.attention
                )
            except (ValueError, RuntimeError) as e:  # an unknown device, CUDA without a GPU, fp16 on a CPU
                raise InputError(f"device {device!s} / dtype {dtype}: {e}") from e
        elif isinstance(model, FrameEncoder):
            self.encoder = model
            info = model.info  # exported graphs carry their normalisation inside
            if info is not None and (tuple(info.mean), tuple(info.std)) != (tuple(mean), tuple(std)):
                warnings.warn(
                    f"{model.path or 'the encoder'} normalises with mean {tuple(info.mean)}, std "
                    f"{tuple(info.std)} but preset {self.preset.name} expects {tuple(mean)}, {tuple(std)}; export "
                    f"with siammae-export --preset {self.preset.name} to follow the protocol exactly",
                    stacklevel=2,
                )
        else:
            raise TypeError(f"model must be a SiamMAE, a ViTEncoder or a FrameEncoder, got {type(model).__name__}")
        self.size = self.preset.size  # the size override, parsed (None: the preset's own)
        self.chunk_given = chunk is not None
        self.chunk = DEFAULT_CHUNK if chunk is None else chunk
        self.backend = backend
        self.prefetch = prefetch
        self.patch_size = self.encoder.patch_size
        self.device = torch.device(self.encoder.device)
        self.inputs.frame_size(480, 854, self.patch_size)  # a size the patch size does not fit fails here, not later

    # ------------------------------------------------------------------------------------------------ sizes
    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) at which a ``height`` x ``width`` video is encoded."""
        hw = self.inputs.frame_size(height, width, self.patch_size)
        fixed = self.encoder.fixed_size
        if fixed is not None and tuple(fixed) != tuple(hw):
            # sizes as HEIGHTxWIDTH, as --size and the exported file names spell them
            name = self.encoder.path
            asked = f"preset {self.preset.name}"
            if self.size is not None:
                asked += f" at --size {_size_text(self.size)}"
            raise InputError(
                f"{name.name if name is not None else 'the encoder'} was built for {fixed[0]}x{fixed[1]} frames "
                f"(height x width) but {asked} encodes this {height}x{width} video at {hw[0]}x{hw[1]}; export one "
                f"for that size: siammae-export --height {hw[0]} --width {hw[1]}"
            )
        return hw

    def chunk_for(self, frames) -> int:
        """Frames per encoder call for ``frames``: ``chunk``, or 1 for a real-time live source when no chunk was
        given (a chunk waits for all its frames: real time tracks each frame as it comes)."""
        if not self.chunk_given and isinstance(frames, LiveSource) and frames.realtime:
            return 1
        return self.chunk

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) patch grid of a ``height`` x ``width`` video, the shape of the soft labels."""
        H, W = self.frame_size(height, width)
        return H // self.patch_size, W // self.patch_size

    def dtype_name(self) -> str:
        """The encoder's compute precision as a report names it ("float32", "fp16", ...)."""
        return str(self.encoder.dtype).replace("torch.", "")

    # ----------------------------------------------------------------------------------------------- public
    def masks(
        self, frames, first_mask: MaskLike, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, id_map)`` for every frame, frame 0 included (its given mask).

        frames: a video path or frame folder, a :class:`~siammae.data.video.VideoSource`, a list of image files,
            or any iterable of (H, W, 3) uint8 RGB arrays (or ``Frame`` objects); consumed lazily.
        first_mask: frame 0's (H, W) id map, or a mask file (any format of ``siammae.data.masks``).
        references: masks of later frames, keyed by frame index or frame name, adding objects that appear there.
        id_map: (H, W) uint8 at the frame's resolution, the ids of the masks.
        """
        for item in self.stream(frames, first_mask, references):
            yield item.frame.index, self.read_out(item)

    def soft(
        self, frames, first_labels, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(frame_index, soft)`` with soft (C, h, w) fp32 labels at patch resolution (see ``grid_size``).

        first_labels: an (H, W) id map / mask file (channel c is then ``object_ids[c]``), (C, h, w) float soft
        labels on the patch grid (e.g. keypoint heatmaps), or a function ``(frame0, grid) -> labels``.
        """
        for item in self.stream(frames, first_labels, references):
            yield item.frame.index, item.soft

    def keypoints(self, frames, first_points: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(frame_index, [J, 2] (x, y) pixels, [J] visible)`` for frames 1.. from the [J, 2] pixels of
        frame 0 (NaN rows: not given), as Gaussian heatmaps propagated like masks (the JHMDB protocol)."""

        def heatmaps(frame0: Frame, grid):
            return keypoints_to_heatmaps(first_points, frame0.rgb.shape[:2], grid)  # (1 + J, h, w)

        for item in self.stream(frames, heatmaps):
            if item.frame.index > 0:
                yield (item.frame.index, *heatmaps_to_keypoints(item.soft, item.frame.rgb.shape[:2]))

    def read_out(self, item: Tracked) -> np.ndarray:
        """Soft labels of a frame -> its (H, W) uint8 id map (the preset's upsampling + argmax), given ids on top."""
        H, W = item.frame.rgb.shape[:2]
        if item.frame.index == 0 and item.given is not None:
            return item.given
        channels = labels_to_mask(  # (H, W) int64
            item.soft, (H, W), self.patch_size, self.config, input_size=self.frame_size(H, W)
        )
        ids = torch.from_numpy(item.object_ids).to(channels.device)[channels].cpu().numpy()  # (H, W) uint8
        if item.given is not None:
            ids = np.where(item.given > 0, item.given, ids)
        return ids

    # ------------------------------------------------------------------------------------------------ stream
    def stream(self, frames, first_labels, references=None, times: Timer | None = None) -> Iterator[Tracked]:
        """The generator under ``masks``, ``soft`` and ``keypoints``: one :class:`Tracked` per frame, in order.

        times: a :class:`Timer` that receives the busy seconds of decoding, encoding and propagation, and counts
        the frames (a run's own, so that one tracker can serve several streams at once).
        """
        chunk = self.chunk_for(frames)
        if isinstance(frames, LiveSource):
            source = frames.read(self._prepare)  # decoded and resized in the live source's reader thread
        elif self.prefetch:
            source = BackgroundReader(self.inputs_of(frames), maxsize=2 * chunk, name="siammae-decode")
        else:
            yield from self._propagate(self.inputs_of(frames), first_labels, references, times, chunk)
            return
        try:
            yield from self._propagate(source, first_labels, references, times, chunk)
        finally:
            source.close()
            if times is not None:
                times.add("decode", source.busy_s)

    def inputs_of(self, frames) -> Iterator[tuple[Frame, np.ndarray]]:
        """Decode and resize: ``(frame, encoder input)`` per frame, the input as :func:`inputs.resize_frame` makes
        it at ``frame_size``. Pure CPU work, which ``prefetch`` runs in a background thread."""
        size = None
        for frame in _frames(frames):
            if size is None:
                size = self.frame_size(*frame.rgb.shape[:2])
            yield frame, resize_frame(frame.rgb, size, self.inputs.resize)

    def _prepare(self, frame: Frame) -> tuple[Frame, np.ndarray]:
        """One frame as :meth:`inputs_of` prepares it: (frame, encoder input at ``frame_size``)."""
        return frame, resize_frame(frame.rgb, self.frame_size(*frame.rgb.shape[:2]), self.inputs.resize)

    def _propagate(
        self, source: Iterable[tuple[Frame, np.ndarray]], first_labels, references, times: Timer | None, chunk: int
    ) -> Iterator[Tracked]:
        """``(frame, input)`` pairs (see :meth:`inputs_of`) -> one :class:`Tracked` per frame, ``chunk`` frames per
        encoder call."""
        references = dict(references or {})
        self._check_references(references)
        prop = Propagator(self.config, backend=self.backend)
        objects = _Objects()
        grid = None

        def given_mask(pair) -> tuple[Frame, np.ndarray, np.ndarray | None]:
            frame, x = pair
            ref = references.get(frame.index, references.get(frame.name)) if frame.index > 0 else None
            return frame, x, None if ref is None else _load_mask(ref, frame, f"mask of frame {frame.name}")

        # a frame given a mask ends its chunk, so that the frames after it see it as a reference; the first chunk is
        # frames 0 and 1 only, so that the first result (and a progress bar's first update) comes after two frames,
        # not a whole chunk (the chunks change no result)
        pairs = map(given_mask, source)
        for batch in chunks(pairs, chunk, ends=lambda item: item[2] is not None, first=min(chunk, 2)):
            if grid is None:
                grid = self.grid_size(*batch[0][0].rgb.shape[:2])
            t0 = time.perf_counter()
            feats = self.encoder(to_batch([x for _, x, _ in batch], self.device))  # (T, h, w, D)
            self._sync()
            t1 = time.perf_counter()
            out = self._labels_of(prop, batch, feats, grid, first_labels, objects)
            self._sync()
            if times is not None:
                times.add("encode", t1 - t0)
                times.add("propagate", time.perf_counter() - t1)
            for item in out:
                if times is not None:
                    times.frames += 1
                yield item

    def _check_references(self, references: Mapping) -> None:
        if references and self.config.first_labels == "crw":
            raise InputError(
                f"preset {self.preset.name} follows CRW's code, which takes one mask, frame 0's; masks of later "
                "frames need a preset with first_labels 'nearest' (siammae-davis, dino)"
            )
        if 0 in references:
            raise InputError("frame 0's mask is the first mask; references are for later frames")

    def _labels_of(self, prop: Propagator, batch: list, feats: torch.Tensor, grid, first_labels, objects: _Objects):
        """The soft labels of one chunk's frames, ``batch`` of (frame, input, given mask or None) and their
        features (T, h, w, D): frame 0's from its labels (which start ``prop``), the others propagated; a given mask
        adds its new objects and makes its frame a reference. -> one :class:`Tracked` per frame."""
        out: list[Tracked] = []
        if prop.state is None:  # frame 0: its labels start the propagator
            frame0 = batch.pop(0)[0]
            given, soft0, objects.ids = self._first_labels(first_labels, frame0, grid, objects.lut)
            prop.reset(feats[0], soft0)
            feats = feats[1:]
            out.append(Tracked(frame0, soft0, given, objects.ids))
        if batch:
            soft = prop.step(feats)  # (T, C, h, w)
            for j, (frame, _, given) in enumerate(batch):
                if given is None:
                    out.append(Tracked(frame, soft[j], None, objects.ids))
                    continue
                # a mask adds objects at this frame (always the chunk's last)
                objects.add(check_objects(given, f"mask of frame {frame.name}"))
                soft_j = prop.add_reference(torch.from_numpy(objects.lut[mask_to_labels(given, grid).numpy()]))
                out.append(Tracked(frame, soft_j, given, objects.ids))
        return out

    def _first_labels(self, first_labels, frame0: Frame, grid: tuple[int, int], lut: np.ndarray):
        """-> (given (H, W) uint8 or None, labels0 (C, h, w) fp32 on the device, object ids (C,) uint8); fills
        ``lut`` (object id -> channel) for the ids."""
        if callable(first_labels):
            first_labels = first_labels(frame0, grid)
        if (
            isinstance(first_labels, torch.Tensor)
            and first_labels.is_floating_point()
            or (isinstance(first_labels, np.ndarray) and first_labels.dtype.kind == "f")
        ):
            soft = torch.as_tensor(first_labels, dtype=torch.float32)
            if soft.dim() != 3 or tuple(soft.shape[1:]) != grid:
                raise InputError(
                    f"soft first labels must be (C, {grid[0]}, {grid[1]}) on the patch grid, got {tuple(soft.shape)}"
                )
            if soft.shape[0] > 256:
                raise InputError(f"soft first labels have {soft.shape[0]} channels; at most 256 are supported")
            lut[: soft.shape[0]] = np.arange(soft.shape[0])
            return None, soft.to(self.device), np.arange(soft.shape[0], dtype=np.uint8)
        given = _load_mask(first_labels, frame0, "first mask")
        if self.config.first_labels == "crw":
            colours = _mask_colours(first_labels, given)
            soft, lblset = crw_first_labels(colours, self.frame_size(*given.shape), grid)  # CRW data/vos.py
            return given, soft.to(self.device), crw_palette_ids(lblset)  # a channel's id: its colour's index
        ids = np.concatenate([[0], check_objects(given, "first mask")]).astype(np.uint8)  # (C,)
        lut[ids] = np.arange(len(ids))
        channels = torch.from_numpy(lut[mask_to_labels(given, grid).numpy()])  # (h, w) 0..C-1
        soft = one_hot(channels, len(ids)).to(self.device)  # (C, h, w)
        return given, soft, ids

    def _sync(self) -> None:
        if self.device.type == "cuda":  # stage times measure work done, not kernels queued
            torch.cuda.synchronize(self.device)


def _load_mask(mask: MaskLike, frame: Frame, name: str) -> np.ndarray:
    """A mask (array or file) as a uint8 id map at the frame's size, with at least one object."""
    if isinstance(mask, (str, os.PathLike)):
        name = str(mask)
        mask = read_mask(mask)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"{name}: a mask must be an (H, W) id map, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.dtype.kind not in "iub":
            raise InputError(f"{name}: mask ids must be integers, got dtype {mask.dtype}")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise InputError(f"{name}: mask ids range {mask.min()}..{mask.max()}; ids must be 0..255")
        mask = mask.astype(np.uint8)
    mask = fit_mask(mask, frame.rgb.shape[:2], name)
    check_objects(mask, name)
    return np.require(mask, requirements=["C", "W"])  # torch.from_numpy wants a writable array


def _mask_colours(mask: MaskLike, ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB colours of frame 0's mask as CRW reads it (``cv2.imread``): a mask file's own colours
    (a DAVIS-2016 0 / 255 mask is grey, a DAVIS-2017 one has palette colours) when it has the frame's size; else,
    and for an id array, the colours of CRW's palette for the ids."""
    if isinstance(mask, (str, os.PathLike)):
        from siammae.data.images import open_image, upright

        with open_image(Path(mask), InputError) as im:
            rgb = np.asarray(upright(im).convert("RGB"))
        if rgb.shape[:2] == ids.shape:
            return rgb
    return crw_palette()[ids]


def _frames(frames) -> Iterator[Frame]:
    """Any supported frame source as an iterator of :class:`Frame`: a video path or frame folder, a
    ``VideoSource``, a list of image files (a benchmark sequence) or an iterable of arrays / ``Frame`` objects."""
    if isinstance(frames, (str, os.PathLike)):
        frames = open_video(frames)
    if isinstance(frames, VideoSource):
        yield from frames
        return
    shape = first = None
    for i, f in enumerate(frames):
        label = f"frame {i}"
        if isinstance(f, (str, os.PathLike)):  # an image file: decoded as a frame folder's frames are
            label = str(f) if shape is not None else Path(f).name
            f = Frame(i, Path(f).stem, read_image(Path(f)))
        elif not isinstance(f, Frame):
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise InputError(f"frame {i}: expected an (H, W, 3) uint8 RGB array, got {f.shape} {f.dtype}")
            f = Frame(i, f"{i:05d}", f)
        if shape is None:
            shape, first = f.rgb.shape, label
        elif f.rgb.shape != shape:
            raise InputError(f"{label} is {f.rgb.shape[1]}x{f.rgb.shape[0]} but {first} is {shape[1]}x{shape[0]}")
        yield f


def _size_text(size) -> str:
    """``--size`` as given: ``480`` or ``480x880`` (height x width)."""
    return f"{size[0]}x{size[1]}" if isinstance(size, (tuple, list)) else str(size)
