"""Tracking objects through a video of any length by label propagation, streamed.

A :class:`Tracker` holds a frame encoder and a propagation preset. ``tracker.track(frames, first_mask)`` is a
generator of ``(frame_index, id_map)``; underneath it the stream runs as

    decode thread --(bounded queue)--> chunk of frames --encoder--> (T, h, w, D) --Propagator--> (T, C, h, w)

so at most ``2 * chunk`` decoded frames, one chunk of features and the propagator's state (reference frames and
the last n frames at patch resolution) exist at any time, whatever the video's length. SAM 2 preloads every frame
of a video; this never does. ``track_soft`` yields the soft labels instead, for other read-outs (keypoints).

Objects are numbered by their mask ids, which are preserved. Inside, the propagation engine works on channels
0..K (background first, then each object id in the order it was first given); ``object_ids`` maps channels back.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from siammae.data.masks import check_objects, fit_mask, read_mask
from siammae.data.transforms import DINO_STD, IMAGENET_MEAN, IMAGENET_STD, frames_to_batch, target_size
from siammae.data.video import Frame, VideoSource, open_video
from siammae.errors import InputError
from siammae.propagation import Propagator, get_preset, labels_to_mask, mask_to_labels, one_hot
from siammae.propagation.features import FrameEncoder, TorchEncoder
from siammae.tracking.report import StageTimes
from siammae.tracking.stream import Prefetcher

MaskLike = np.ndarray | str | os.PathLike


@dataclass
class Tracked:
    """One frame of a tracking stream.

    frame: the decoded frame (index, name, rgb). soft: (C, h, w) fp32 soft labels at patch resolution, on the
    tracker's device; channel c is object ``object_ids[c]``. given: the (H, W) id map given for this frame (frame
    0's mask, or a later mask adding objects), else None.
    """

    frame: Frame
    soft: torch.Tensor
    given: np.ndarray | None
    object_ids: np.ndarray  # (C,) uint8, channel -> object id; a snapshot (later masks add channels)


class Tracker:
    """Track objects given by a first-frame mask through a video, in constant memory.

    model: a SiamMAE / ViTEncoder (wrapped in a :class:`~siammae.propagation.features.TorchEncoder`), or any
        :class:`~siammae.propagation.features.FrameEncoder` (ONNX / TensorRT runtimes), used as is.
    preset: propagation preset (``siammae.propagation.PRESETS``); ``overrides`` replace its fields (``topk=7``,
        ``temperature``, ``n_last``, ``radius``, ...). The preset also fixes the input convention: ``dino`` uses
        DINO's std (0.228, ...) and floors the long side to a multiple of 64 (DINO ``read_frame``); the CRW-style
        ``siammae-*`` presets use ImageNet's std and floor the long side to the patch size.
    device, dtype: for a PyTorch model ("auto" | "cpu" | "cuda"; "fp32" | "fp16" | "bf16").
    size: short side of the frames the encoder sees (the paper's protocols: 480).
    chunk: frames encoded together, and propagated with one top-k call.
    backend: kernel backend of the propagation engine ("auto" | "triton" | "torch").
    """

    def __init__(
        self,
        model,
        preset: str = "siammae-davis",
        device: str | torch.device = "auto",
        dtype: str = "fp32",
        size: int = 480,
        chunk: int = 8,
        backend: str = "auto",
        **overrides,
    ):
        self.preset = preset
        self.config = get_preset(preset, **overrides)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise InputError(f"chunk must be an integer >= 1, got {chunk!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"size must be a positive integer (the short side in pixels), got {size!r}")
        std = DINO_STD if preset == "dino" else IMAGENET_STD
        if isinstance(model, nn.Module):
            try:
                self.encoder = TorchEncoder(model, device=device, dtype=dtype, mean=IMAGENET_MEAN, std=std)
            except (ValueError, RuntimeError) as e:  # an unknown device, CUDA without a GPU, fp16 on a CPU
                raise InputError(f"device {device!s} / dtype {dtype}: {e}") from e
        elif isinstance(model, FrameEncoder):
            self.encoder = model
            info = getattr(model, "info", None)  # exported graphs carry their normalisation inside
            if info is not None and tuple(info.std) != tuple(std):
                warnings.warn(
                    f"{getattr(model, 'path', 'the encoder')} normalises with std {tuple(info.std)} but preset "
                    f"{preset} expects {tuple(std)}; export with --std {'dino' if preset == 'dino' else 'imagenet'} "
                    "to follow the protocol exactly",
                    stacklevel=2,
                )
        else:
            raise TypeError(f"model must be a SiamMAE, a ViTEncoder or a FrameEncoder, got {type(model).__name__}")
        self.size = size
        self.chunk = chunk
        self.backend = backend
        self.patch_size = self.encoder.patch_size
        self.device = torch.device(self.encoder.device)
        if size < self.patch_size:
            raise InputError(f"size {size} is smaller than the patch size {self.patch_size}")
        self.times = StageTimes()  # of the last stream run without its own ``times`` (``track``, ``track_soft``)

    # ------------------------------------------------------------------------------------------------ sizes
    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) at which a ``height`` x ``width`` video is encoded."""
        p = self.patch_size
        long_multiple = 64 if self.preset == "dino" and 64 % p == 0 else p  # DINO read_frame
        hw = target_size(height, width, self.size, p, long_multiple)
        fixed = self.encoder.fixed_size
        if fixed is not None and tuple(fixed) != tuple(hw):
            raise InputError(
                f"the encoder was built for {fixed[1]}x{fixed[0]} input but this {width}x{height} video is encoded "
                f"at {hw[1]}x{hw[0]} (size {self.size}, preset {self.preset}); export it for this size: "
                f"siammae-export --height {hw[0]} --width {hw[1]}"
            )
        return hw

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) patch grid of a ``height`` x ``width`` video, the shape of the soft labels."""
        H, W = self.frame_size(height, width)
        return H // self.patch_size, W // self.patch_size

    # ----------------------------------------------------------------------------------------------- public
    def track(
        self, frames, first_mask: MaskLike, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(frame_index, id_map)`` for every frame, frame 0 included (its given mask).

        frames: a video path or frame folder, a :class:`~siammae.data.video.VideoSource`, or any iterable of
            (H, W, 3) uint8 RGB arrays (or ``Frame`` objects); consumed lazily in a background thread.
        first_mask: frame 0's (H, W) id map, or a mask file (any format of ``siammae.data.masks``).
        references: masks of later frames, keyed by frame index or frame name, adding objects that appear there.
        id_map: (H, W) uint8 at the frame's resolution, the ids of the masks.
        """
        for item in self.stream(frames, first_mask, references):
            yield item.frame.index, self.read_out(item)

    def track_soft(
        self, frames, first_labels, references: Mapping[int | str, MaskLike] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(frame_index, soft)`` with soft (C, h, w) fp32 labels at patch resolution (see ``grid_size``).

        first_labels: an (H, W) id map / mask file (channel c is then ``object_ids[c]``), or (C, h, w) float soft
        labels on the patch grid (e.g. keypoint heatmaps), propagated as they are.
        """
        for item in self.stream(frames, first_labels, references):
            yield item.frame.index, item.soft

    def read_out(self, item: Tracked) -> np.ndarray:
        """Soft labels of a frame -> its (H, W) uint8 id map (the preset's upsampling + argmax), given ids on top."""
        H, W = item.frame.rgb.shape[:2]
        if item.frame.index == 0 and item.given is not None:
            return item.given
        channels = labels_to_mask(item.soft, (H, W), self.patch_size, self.config)  # (H, W) int64
        ids = torch.from_numpy(item.object_ids).to(channels.device)[channels].cpu().numpy()  # (H, W) uint8
        if item.given is not None:
            ids = np.where(item.given > 0, item.given, ids)
        return ids

    # ------------------------------------------------------------------------------------------------ stream
    def stream(self, frames, first_labels, references=None, times: StageTimes | None = None) -> Iterator[Tracked]:
        """The generator under ``track`` and ``track_soft``: one :class:`Tracked` per frame, in order.

        times: where the stream adds its decode / encode / propagate seconds and frames (a run's own, so that one
        Tracker can serve several streams at once); by default a new one, kept as ``self.times``.
        """
        if times is None:
            self.times = times = StageTimes()
        references = dict(references or {})
        if 0 in references:
            raise InputError("frame 0's mask is the first mask; references are for later frames")
        source = Prefetcher(_frames(frames), maxsize=2 * self.chunk, name="siammae-decode")
        try:
            yield from self._propagate(source, first_labels, references, times)
        finally:
            source.close()
            times.add("decode", source.busy_s)

    def _propagate(self, source: Prefetcher, first_labels, references: dict, times: StageTimes) -> Iterator[Tracked]:
        prop = Propagator(self.config, backend=self.backend)
        ids = None  # (C,) channel -> object id
        lut = np.zeros(256, dtype=np.int64)  # object id -> channel
        size = grid = None
        for batch in self._chunks(source, references):
            if size is None:
                H, W = batch[0][0].rgb.shape[:2]
                size = self.frame_size(H, W)
                grid = (size[0] // self.patch_size, size[1] // self.patch_size)
            t0 = time.perf_counter()
            feats = self.encoder(frames_to_batch([f.rgb for f, _ in batch], size, self.device))  # (T, h, w, D)
            self._sync()
            t1 = time.perf_counter()
            times.add("encode", t1 - t0)
            out: list[Tracked] = []
            if prop.state is None:  # frame 0: its labels start the propagator
                frame0 = batch.pop(0)[0]
                given, soft0, ids = self._first_labels(first_labels, frame0, grid, lut)
                prop.reset(feats[0], soft0)
                feats = feats[1:]
                out.append(Tracked(frame0, soft0, given, ids))
            if batch:
                soft = prop.step(feats)  # (T, C, h, w)
                for j, (frame, given) in enumerate(batch):
                    soft_j = soft[j]
                    if given is not None:  # a mask adds objects at this frame (always the chunk's last)
                        new = [i for i in check_objects(given, f"mask of frame {frame.name}") if i not in ids]
                        if new:
                            lut[new] = np.arange(len(ids), len(ids) + len(new))
                            ids = np.concatenate([ids, np.asarray(new, dtype=np.uint8)])
                        soft_j = prop.add_reference(torch.from_numpy(lut[mask_to_labels(given, grid).numpy()]))
                    out.append(Tracked(frame, soft_j, given, ids))
            self._sync()
            times.add("propagate", time.perf_counter() - t1)
            for item in out:
                times.frames += 1
                yield item

    def _chunks(self, source: Iterable[Frame], references: dict) -> Iterator[list[tuple[Frame, np.ndarray | None]]]:
        """Lists of up to ``chunk`` (frame, given mask or None); a frame with a given mask ends its chunk, so that
        the frames after it are propagated with it as a reference. When the source fails, the frames decoded
        before the failure come out first, then the exception."""
        batch: list[tuple[Frame, np.ndarray | None]] = []
        frames = iter(source)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except BaseException:  # the source broke (truncated file, Ctrl-C): the frames before it still count
                if batch:
                    yield batch
                raise
            given = None
            if frame.index > 0:
                ref = references.get(frame.index, references.get(frame.name))
                if ref is not None:
                    given = _load_mask(ref, frame, f"mask of frame {frame.name}")
            batch.append((frame, given))
            if len(batch) == self.chunk or given is not None:
                yield batch
                batch = []
        if batch:
            yield batch

    def _first_labels(self, first_labels, frame0: Frame, grid: tuple[int, int], lut: np.ndarray):
        """-> (given (H, W) uint8 or None, labels0 (C, h, w) fp32 on the device, object ids (C,) uint8); fills
        ``lut`` (object id -> channel) for the ids."""
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


def _frames(frames) -> Iterator[Frame]:
    """Any supported frame source as an iterator of :class:`Frame` (runs in the decode thread)."""
    if isinstance(frames, (str, os.PathLike)):
        frames = open_video(frames)
    if isinstance(frames, VideoSource):
        yield from frames
        return
    shape = None
    for i, f in enumerate(frames):
        if not isinstance(f, Frame):
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise InputError(f"frame {i}: expected an (H, W, 3) uint8 RGB array, got {f.shape} {f.dtype}")
            f = Frame(i, f"{i:05d}", f)
        if shape is None:
            shape = f.rgb.shape
        elif f.rgb.shape != shape:
            raise InputError(f"frame {i} is {f.rgb.shape[1]}x{f.rgb.shape[0]} but frame 0 is {shape[1]}x{shape[0]}")
        yield f
