"""Streaming label propagation: reference frames + a queue of the last n frames, chunked, bounded memory.

The context of frame t is the reference frames (frame 0 with its given labels, plus any frame given a mask
later) and the last n frames with their propagated soft labels (docs/PROTOCOL.md). The top-k keys
and weights of a frame depend only on features, so ``Propagator.step`` computes them for a whole chunk of
frames in one ``topk_affinity`` call (frames inside the chunk see the earlier frames of the chunk: their
features are known), and only the gather-and-sum of labels, N x k x C per frame, runs frame after frame. The
state holds the reference frames and at most n + 1 queued frames, so memory does not grow with the video.

    prop = Propagator("dino")
    prop.reset(features0, mask_to_labels(mask0, (h, w)))   # features (h, w, D), not yet L2-normalised
    for chunk in chunks:                                    # (T, h, w, D)
        soft = prop.step(chunk)                             # (T, C, h, w)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from siammae.errors import InputError
from siammae.kernels.dispatch import resolve_backend
from siammae.kernels.topk_affinity import band_order, topk_affinity
from siammae.propagation.config import Preset, PropagationConfig, get_preset
from siammae.propagation.inputs import chunks
from siammae.propagation.labels import one_hot


@dataclass
class PropagationState:
    """What a video needs between steps: one bank of frames, laid out ``[references | queue | chunk]``.

    feats: (F, N, D) L2-normalised features; labels: (F, N, C) fp32 soft labels at patch resolution,
    N = h * w. Labels are in raster order (``y * w + x``); features too, except on the CPU path, which keeps them
    in its banded layout (``order``, :func:`~siammae.kernels.topk_affinity.band_order`) so that its GEMMs read
    the bank in place. ``frames``: frames seen so far (frame 0 included), for error messages. Frames
    ``0 .. n_ref-1`` are the reference frames (frame 0 and every frame given a mask later);
    the next ``n_queue`` (at most n + 1) are the last frames that are not references, oldest first: the newest
    may still become a reference (``add_reference``), and the n before it then form the short-term context.
    The rest is room for the frames of the next chunk. Keeping the context in one tensor means a step neither
    copies nor concatenates it.
    """

    grid: tuple[int, int]
    feats: torch.Tensor
    labels: torch.Tensor
    n_ref: int = 1
    n_queue: int = 0
    n_copies: int = 0  # the first queued frames that are copies of frame 0 (prefill_queue), scored once
    order: torch.Tensor | None = None  # (N,) raster index of each bank position; None: raster order
    frames: int = 1
    stepped: bool = False  # step() has returned a frame (the one add_reference applies to)
    last_is_reference: bool = False  # that frame was given a mask since

    @property
    def num_classes(self) -> int:
        return self.labels.shape[-1]

    @property
    def n_used(self) -> int:
        return self.n_ref + self.n_queue

    def reserve(self, size: int) -> None:
        """Make the bank ``size`` frames long, keeping the used ones (a copy only when the size changes)."""
        if self.feats.shape[0] != size:
            used = self.n_used
            feats = self.feats.new_empty(size, *self.feats.shape[1:])
            labels = self.labels.new_empty(size, *self.labels.shape[1:])
            feats[:used] = self.feats[:used]
            labels[:used] = self.labels[:used]
            self.feats, self.labels = feats, labels

    def pad_classes(self, num_classes: int) -> None:
        """Grow the label bank to ``num_classes`` channels (new objects start at 0 everywhere)."""
        if num_classes > self.num_classes:
            self.labels = F.pad(self.labels, (0, num_classes - self.num_classes))  # (F, N, C) -> (F, N, C')

    def move(self, src: int, dst: int, count: int) -> None:
        """Move ``count`` frames from bank position ``src`` to ``dst``, in place, one frame at a time in the
        order that never overwrites a frame before it is read."""
        if src == dst:
            return
        order = range(count) if dst < src else reversed(range(count))
        for i in order:
            self.feats[dst + i] = self.feats[src + i]
            self.labels[dst + i] = self.labels[src + i]


def _check_finite(features: torch.Tensor, first: int) -> None:
    """Features with NaN or inf would propagate nothing (every similarity NaN) and a run would still end: stop
    with the number of the first bad frame instead. features: (T, ...) of frames first .. first+T-1."""
    bad = ~torch.isfinite(features.reshape(features.shape[0], -1)).all(1)  # (T,)
    if bool(bad.any()):
        frame = first + int(bad.nonzero()[0, 0])
        raise InputError(
            f"frame {frame}: the encoder's features are not finite (NaN or inf); check the weights "
            "(a checkpoint with NaN / inf values) and the input"
        )


def _normalise(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise over channels in fp32 (as DINO and CRW), stored back in the input dtype: the query form. With
    the keys' form (the bank), the one place features are normalised, for every encoder (PyTorch, ONNX and TensorRT
    encoders return them unnormalised)."""
    return F.normalize(features.float(), dim=-1, p=2).to(features.dtype)


def _normalise_keys(features: torch.Tensor) -> torch.Tensor:
    """(..., N, D) -> the same L2-normalised as DINO normalises its context frames, bit for bit.

    DINO's ``label_propagation`` normalises the query frame as (N, D) over its last dim but the context as a
    stacked (ncontext, D, N) tensor over dim 1; the two reductions round differently (the same frame's features
    differ in the last bit in most channels), and a last-bit difference in a similarity can swap two near-tied
    keys of the top-k. So the bank (the keys) is normalised in DINO's layout, the query as the query.
    """
    shape = features.shape
    x = features.float().reshape(-1, *shape[-2:]).transpose(1, 2).contiguous()  # (F, D, N)
    x = F.normalize(x, dim=1, p=2)
    return x.transpose(1, 2).reshape(shape).to(features.dtype)  # (F, D, N) -> (..., N, D)


def _in_order(features: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """(..., N, D) in raster order -> the bank's order (``order``; None: raster)."""
    return features if order is None else features[..., order, :]


class Propagator:
    """k-NN label propagation through a video, a chunk of frames at a time.

    config: a :class:`PropagationConfig`, a :class:`~siammae.propagation.config.Preset` or a preset name
        (``preset_names()``); None: the default preset of the masks task.
    backend: "auto" (Triton on CUDA, PyTorch otherwise), "triton" or "torch"; ``SIAMMAE_KERNEL_BACKEND``
        overrides "auto".

    Memory: the bank holds the reference frames, n + 1 queued frames and the current chunk, features in the
    input dtype and labels in fp32; the top-k op adds at most a bounded block of scores (PyTorch) or nothing
    of the sort (Triton).
    """

    def __init__(self, config: PropagationConfig | Preset | str | None = None, backend: str = "auto"):
        if not isinstance(config, (PropagationConfig, Preset, str, type(None))):
            raise InputError(
                f"config must be a PropagationConfig, a Preset or a preset name, got {type(config).__name__}"
            )
        self.config = config if isinstance(config, PropagationConfig) else get_preset(config).propagation
        self.backend = backend
        self.state: PropagationState | None = None

    def reset(self, features0: torch.Tensor, labels0: torch.Tensor) -> None:
        """Start a video.

        features0: (h, w, D) features of frame 0, not L2-normalised.
        labels0: (h, w) integer id map at patch resolution (one-hot over 1 + the largest id), or (C, h, w)
            float soft labels (e.g. keypoint heatmaps).
        """
        if features0.dim() != 3:
            raise InputError(f"features of frame 0 must be (h, w, D), got {tuple(features0.shape)}")
        h, w, D = features0.shape
        if isinstance(labels0, np.ndarray):
            labels0 = torch.from_numpy(np.array(labels0))
        if not torch.is_tensor(labels0) or labels0.dim() not in (2, 3):
            raise InputError("labels of frame 0 must be an (h, w) id map or (C, h, w) soft labels")
        soft = labels0.float() if labels0.dtype.is_floating_point else one_hot(labels0)
        if tuple(soft.shape[1:]) != (h, w):
            raise InputError(f"labels of frame 0 are {tuple(labels0.shape)} but the feature grid is {h}x{w}")
        _check_finite(features0[None], 0)
        n = self.config.n_last
        copies = n if self.config.prefill_queue else 0
        size = 1 + (n + 1) + 1  # the reference, the queue, a chunk of one frame
        cpu_path = resolve_backend(self.backend, features0.device) == "torch"
        order = band_order(h, w).to(features0.device) if cpu_path else None
        feats = features0.new_empty(size, h * w, D)
        labels = torch.empty(size, h * w, soft.shape[0], device=features0.device)
        feats[: 1 + copies] = _in_order(_normalise_keys(features0.reshape(h * w, D)), order)
        labels[: 1 + copies] = soft.to(features0.device).reshape(-1, h * w).T  # (C, h, w) -> (N, C)
        self.state = PropagationState((h, w), feats, labels, n_ref=1, n_queue=copies, n_copies=copies, order=order)

    @torch.no_grad()
    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Propagate to the next T frames: features (T, h, w, D) -> soft labels (T, C, h, w) fp32."""
        st = self._require_state("step")
        h, w = st.grid
        if features.dim() != 4 or tuple(features.shape[1:3]) != (h, w):
            raise InputError(f"features must be (T, {h}, {w}, D), got {tuple(features.shape)}")
        bank = st.feats
        if features.shape[-1] != bank.shape[-1] or features.dtype != bank.dtype or features.device != bank.device:
            raise InputError(
                f"features are {features.shape[-1]}-d {features.dtype} on {features.device} but frame 0 was "
                f"{bank.shape[-1]}-d {bank.dtype} on {bank.device}"
            )
        _check_finite(features, st.frames)
        T, N, C, cfg = features.shape[0], h * w, st.num_classes, self.config
        st.reserve(st.n_ref + cfg.n_last + 1 + T)  # the same size at every step of a steady stream
        first = st.n_used  # bank position of the chunk's first frame
        st.feats[first : first + T] = _in_order(_normalise_keys(features.reshape(T, N, -1)), st.order)
        # Frame j of the chunk sees the n frames before it, earlier frames of the chunk included.
        stop = [first + j for j in range(T)]
        start = [max(st.n_ref, s - cfg.n_last) for s in stop]
        kw = dict(
            n_ref=st.n_ref,
            topk=cfg.topk,
            temperature=cfg.temperature,
            radius=cfg.radius,
            neighbourhood=cfg.neighbourhood,
            restrict_ref=cfg.restrict_reference,
            backend=self.backend,
            keep_ties=cfg.keep_ties,
            banded=st.order is not None,
            copies=(0, st.n_ref, st.n_ref + st.n_copies) if st.n_copies else None,
        )
        query = _normalise(features).reshape(T, N, -1)  # (T, N, D); the bank holds the key form (_normalise_keys)
        keys, labels = st.feats[: first + T], st.labels[: first + T]
        if T == 1:  # every context label is known: the fused top-k + gather
            st.labels[first] = topk_affinity(query, keys, (h, w), start, stop, labels=labels, **kw)[0]
        else:
            weights, index = topk_affinity(query, keys, (h, w), start, stop, **kw)  # (T, N, k) each
            flat = labels.reshape(-1, C)  # (F*N, C), a view
            for j in range(T):  # the only sequential part: N x k x C per frame
                gathered = flat[index[j].clamp_min(0)]  # (N, k, C); empty slots weigh 0
                st.labels[first + j] = torch.einsum("nk,nkc->nc", weights[j], gathered)
        out = st.labels[first : first + T].clone()  # (T, N, C)
        # Keep the last n + 1 frames that are not references: slide them down to follow the references.
        keep = min(cfg.n_last + 1, st.n_queue + T)
        st.move(st.n_used + T - keep, st.n_ref, keep)
        st.n_copies = max(0, st.n_copies - (st.n_queue + T - keep))  # the oldest frames leave first
        st.n_queue, st.stepped, st.last_is_reference = keep, True, False
        st.frames += T
        return out.view(T, h, w, C).permute(0, 3, 1, 2)  # (T, N, C) -> (T, C, h, w)

    @torch.no_grad()
    def add_reference(self, labels: torch.Tensor) -> torch.Tensor:
        """Give a mask for the frame that ``step`` returned last (objects that appear later).

        labels: (h, w) integer id map at patch resolution; where it is non-zero its ids overwrite the
        propagated label of that frame (one-hot), C grows to 1 + the largest id, and the frame leaves the
        queue to become a permanent reference frame like frame 0. Returns the frame's new soft labels
        (C, h, w).
        """
        st = self._require_state("add_reference")
        if not st.stepped:
            raise InputError("add_reference applies to the frame step() returned last, and step() was not called")
        h, w = st.grid
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.array(labels))
        if not torch.is_tensor(labels) or tuple(labels.shape) != (h, w) or labels.dtype.is_floating_point:
            got = f"{tuple(labels.shape)} {labels.dtype}" if torch.is_tensor(labels) else type(labels).__name__
            raise InputError(f"reference labels must be an ({h}, {w}) integer id map, got {got}")
        ids = labels.to(st.labels.device).reshape(-1)  # (N,)
        st.pad_classes(int(ids.max()) + 1)
        if not st.last_is_reference:
            # The newest queued frame moves to the end of the references: rotate it in front of the queue,
            # through the first free slot (after a step the bank has room for at least one more frame).
            last = st.n_used - 1
            st.move(last, st.n_used, 1)
            st.move(st.n_ref, st.n_ref + 1, st.n_queue - 1)
            st.move(st.n_used, st.n_ref, 1)
            st.n_ref, st.n_queue, st.last_is_reference = st.n_ref + 1, st.n_queue - 1, True
        lab = st.labels[st.n_ref - 1]  # (N, C), a view of the bank
        given = ids > 0
        lab[given] = F.one_hot(ids[given], st.num_classes).float()
        return lab.T.reshape(st.num_classes, h, w).clone()

    @property
    def num_classes(self) -> int:
        return self._require_state("num_classes").num_classes

    def _require_state(self, what: str) -> PropagationState:
        if self.state is None:
            raise InputError(f"Propagator.{what} needs reset(features0, labels0) first")
        return self.state


def propagate_labels(
    features: Iterable[torch.Tensor],
    first_labels: torch.Tensor,
    preset: PropagationConfig | Preset | str | None = None,
    *,
    chunk_size: int = 8,
    backend: str = "auto",
    **overrides,
) -> Iterator[torch.Tensor]:
    """Propagate frame 0's labels through a video; yields the soft labels (C, h, w) of frames 1, 2, ...

    features: iterable of (h, w, D) features, frame 0 first, not L2-normalised.
    first_labels: (h, w) integer id map (or (C, h, w) soft labels) at patch resolution.
    preset: a preset name, a Preset or a PropagationConfig (None: the default preset of the masks task);
        ``overrides`` replace any of its propagation constants (``topk=7``).
    chunk_size: frames that share one top-k call; the results do not depend on it.
    """
    if isinstance(preset, PropagationConfig):
        config = preset.replace(**overrides)
    else:
        config = get_preset(preset, **overrides).propagation
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    frames = iter(features)
    try:
        first = next(frames)
    except StopIteration:
        raise InputError("propagate_labels needs the features of at least frame 0") from None
    prop = Propagator(config, backend=backend)
    prop.reset(first, first_labels)
    for chunk in chunks(frames, chunk_size):
        yield from prop.step(torch.stack(chunk))
