"""Streaming label propagation: reference frames + a queue of the last n frames, chunked, bounded memory.

The context of frame t is the reference frames (frame 0 with its given labels, plus any frame given a mask
later) and the last n frames with their propagated soft labels (../shared/docs/PROTOCOL.md). The top-k keys
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

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from siammae.errors import InputError
from siammae.kernels.topk_affinity import topk_affinity
from siammae.propagation.config import PropagationConfig, get_preset
from siammae.propagation.labels import one_hot


@dataclass
class PropagationState:
    """What a video needs between steps; every tensor is one frame of L2-normalised features (N, D) or soft
    labels (N, C) at patch resolution, N = h * w."""

    grid: tuple[int, int]
    num_classes: int
    ref_feats: list[torch.Tensor] = field(default_factory=list)
    ref_labels: list[torch.Tensor] = field(default_factory=list)
    # (features, labels) of the last n + 1 frames that are not references, oldest first: the newest one may
    # still become a reference (add_reference), and the n before it then form the short-term context.
    queue: deque = field(default_factory=deque)
    last: tuple[torch.Tensor, torch.Tensor] | None = None  # the frame step() returned last
    last_is_reference: bool = False

    def pad_classes(self, num_classes: int) -> None:
        """Grow every stored label map to ``num_classes`` channels (new objects start at 0 everywhere)."""
        grow = num_classes - self.num_classes
        if grow <= 0:
            return
        pad = lambda lab: F.pad(lab, (0, grow))  # (N, C) -> (N, C + grow)
        self.ref_labels = [pad(lab) for lab in self.ref_labels]
        self.queue = deque(((f, pad(lab)) for f, lab in self.queue), maxlen=self.queue.maxlen)
        if self.last is not None:
            self.last = (self.last[0], pad(self.last[1]))
        self.num_classes = num_classes


def _normalise(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise over channels in fp32 (as DINO and CRW), stored back in the input dtype."""
    return F.normalize(features.float(), dim=-1, p=2).to(features.dtype)


class Propagator:
    """k-NN label propagation through a video, a chunk of frames at a time.

    config: a :class:`PropagationConfig` or a preset name ("dino", "siammae-davis", ...).
    backend: "auto" (Triton on CUDA, PyTorch otherwise), "triton" or "torch"; ``SIAMMAE_KERNEL_BACKEND``
        overrides "auto".
    """

    def __init__(self, config: PropagationConfig | str = "dino", backend: str = "auto"):
        self.config = get_preset(config) if isinstance(config, str) else config
        if not isinstance(self.config, PropagationConfig):
            raise InputError(
                f"config must be a PropagationConfig or a preset name, got {type(config).__name__}"
            )
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
        if labels0.dtype.is_floating_point:
            soft = labels0.float()
        else:
            soft = one_hot(labels0)
        if tuple(soft.shape[1:]) != (h, w):
            raise InputError(f"labels of frame 0 are {tuple(labels0.shape)} but the feature grid is {h}x{w}")
        feats = _normalise(features0).reshape(h * w, D)  # (N, D)
        labels = soft.to(features0.device).reshape(soft.shape[0], h * w).T.contiguous()  # (C, h, w) -> (N, C)
        cfg = self.config
        queue = deque(maxlen=cfg.n_last + 1)
        if cfg.prefill_queue:
            queue.extend([(feats, labels)] * cfg.n_last)
        self.state = PropagationState((h, w), soft.shape[0], [feats], [labels], queue)

    @torch.no_grad()
    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Propagate to the next T frames: features (T, h, w, D) -> soft labels (T, C, h, w) fp32."""
        st = self._require_state("step")
        h, w = st.grid
        if features.dim() != 4 or tuple(features.shape[1:3]) != (h, w):
            raise InputError(f"features must be (T, {h}, {w}, D), got {tuple(features.shape)}")
        ref0 = st.ref_feats[0]
        if (
            features.shape[-1] != ref0.shape[-1]
            or features.dtype != ref0.dtype
            or features.device != ref0.device
        ):
            raise InputError(
                f"features are {features.shape[-1]}-d {features.dtype} on {features.device} but frame 0 was "
                f"{ref0.shape[-1]}-d {ref0.dtype} on {ref0.device}"
            )
        T, N, C, cfg = features.shape[0], h * w, st.num_classes, self.config
        feats = _normalise(features).reshape(T, N, -1)  # (T, N, D)
        recent = list(st.queue)[-cfg.n_last :] if cfg.n_last else []  # the last n non-reference frames
        R, Q = len(st.ref_feats), len(recent)
        bank = torch.cat([torch.stack(st.ref_feats), *(f[None] for f, _ in recent), feats])  # (R+Q+T, N, D)
        labels = torch.cat(
            [
                torch.stack(st.ref_labels),
                *(lab[None] for _, lab in recent),
                feats.new_zeros(T, N, C, dtype=torch.float32),
            ]
        )  # (R+Q+T, N, C); the chunk's own labels are filled in below
        stop = [
            R + Q + j for j in range(T)
        ]  # frame j sees the n frames before it, earlier chunk frames included
        start = [max(R, s - cfg.n_last) for s in stop]
        kw = dict(
            n_ref=R,
            topk=cfg.topk,
            temperature=cfg.temperature,
            radius=cfg.radius,
            neighbourhood=cfg.neighbourhood,
            restrict_ref=cfg.restrict_reference,
            backend=self.backend,
        )
        if T == 1:  # every context label is known: the fused top-k + gather
            out = topk_affinity(feats, bank, (h, w), start, stop, labels=labels, **kw)  # (1, N, C)
        else:
            weights, index = topk_affinity(feats, bank, (h, w), start, stop, **kw)  # (T, N, k) each
            flat = labels.view(-1, C)  # (F*N, C)
            for j in range(T):  # the only sequential part: N x k x C per frame
                gathered = flat[index[j].clamp_min(0)]  # (N, k, C); empty slots weigh 0
                labels[R + Q + j] = torch.einsum("nk,nkc->nc", weights[j], gathered)
            out = labels[R + Q :].clone()  # a copy, so the queue does not keep the whole bank alive
        frames = [(feats[j], out[j]) for j in range(T)]
        st.queue.extend(frames)
        st.last, st.last_is_reference = frames[-1], False
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
        if st.last is None:
            raise InputError(
                "add_reference applies to the frame step() returned last, and step() was not called"
            )
        ids = labels.to(st.last[1].device)
        h, w = st.grid
        if ids.dim() != 2 or tuple(ids.shape) != (h, w) or ids.dtype.is_floating_point:
            raise InputError(
                f"reference labels must be an ({h}, {w}) integer id map, got {tuple(ids.shape)} {ids.dtype}"
            )
        st.pad_classes(max(st.num_classes, int(ids.max()) + 1))
        feats, lab = st.last
        given = ids.reshape(-1) > 0  # (N,)
        lab = lab.clone()
        lab[given] = one_hot(ids.reshape(1, -1), st.num_classes)[:, 0, given].T  # (n_given, C)
        if st.last_is_reference:  # a second mask for the same frame
            st.ref_labels[-1] = lab
        else:
            if st.queue and st.queue[-1][0] is feats:
                st.queue.pop()
            st.ref_feats.append(feats)
            st.ref_labels.append(lab)
        st.last, st.last_is_reference = (feats, lab), True
        return lab.T.reshape(st.num_classes, h, w)

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
    preset: PropagationConfig | str = "dino",
    *,
    chunk_size: int = 8,
    backend: str = "auto",
    **overrides,
) -> Iterator[torch.Tensor]:
    """Propagate frame 0's labels through a video; yields the soft labels (C, h, w) of frames 1, 2, ...

    features: iterable of (h, w, D) features, frame 0 first, not L2-normalised.
    first_labels: (h, w) integer id map (or (C, h, w) soft labels) at patch resolution.
    preset: a preset name or a config; ``overrides`` replace any of its fields (``topk=7``).
    chunk_size: frames that share one top-k call; the results do not depend on it.
    """
    config = preset if isinstance(preset, PropagationConfig) else get_preset(preset)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    frames = iter(features)
    try:
        first = next(frames)
    except StopIteration:
        raise InputError("propagate_labels needs the features of at least frame 0") from None
    prop = Propagator(config, backend=backend)
    prop.reset(first, first_labels)
    chunk = []
    for feat in frames:
        chunk.append(feat)
        if len(chunk) == chunk_size:
            yield from prop.step(torch.stack(chunk))
            chunk = []
    if chunk:
        yield from prop.step(torch.stack(chunk))
