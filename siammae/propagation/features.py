"""The frame-encoder interface that tracking, evaluation and attention maps consume.

A frame encoder turns a batch of RGB frames in [0, 1] into patch features. The PyTorch model, an ONNX graph and a
TensorRT engine all implement it (``siammae.export.runtime`` has the latter two), so the tracker runs on any of them.
Input normalisation belongs to the encoder: the exported graphs carry it inside, and :class:`TorchEncoder` applies
the mean / std it was given.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from siammae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from siammae.device import QUANTIZED, resolve_device, resolve_dtype


@runtime_checkable
class FrameEncoder(Protocol):
    """``encoder(frames)``: (B, 3, H, W) float RGB in [0, 1] -> (B, h, w, D) features (any scale; the
    propagation engine L2-normalises). ``fixed_size`` is the (H, W) a compiled runtime was built for, None when any
    multiple of ``patch_size`` works. ``dtype``: the compute precision (a ``torch.dtype`` or its name). ``path``:
    the exported file it runs (None for a PyTorch model); ``info``: that file's metadata
    (:class:`siammae.export.metadata.ExportInfo`: normalisation, weights' sha256), None where there is none."""

    patch_size: int
    embed_dim: int
    fixed_size: tuple[int, int] | None
    device: torch.device
    dtype: object
    path: Path | None
    info: object | None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor: ...


class TorchEncoder:
    """A SiamMAE or ViTEncoder as a :class:`FrameEncoder`: normalise, run ``model.features`` in inference mode,
    under autocast for fp16 / bf16 on GPU (features returned in fp32); ``dtype="int8"`` on a CPU runs the linear
    layers quantised to int8 (:mod:`siammae.model.quantize`).

    On a CPU the activations' allocations are much cheaper with glibc's malloc tuned
    (:func:`siammae.allocator.tune_cpu_allocator`); that is a setting of the whole process, so the commands apply it
    once at their entry, never this class."""

    fixed_size = None
    path = None  # a PyTorch model, not an exported file
    info = None

    def __init__(
        self,
        model,
        device: str | torch.device = "auto",
        dtype: str = "fp32",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pos_interp: str = "auto",
        attention: str = "auto",
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        if dtype in QUANTIZED:  # int8 on a CPU: the linear layers quantised (a copy; the caller's model unchanged)
            from siammae.model.quantize import quantize_linear

            self.model = quantize_linear(self.model)
        self.mean, self.std = tuple(mean), tuple(std)
        # on the device once, not rebuilt for every chunk
        self._mean = torch.tensor(self.mean, device=self.device)
        self._std = torch.tensor(self.std, device=self.device)
        self.pos_interp = pos_interp
        self.attention = attention  # ViTEncoder.features: the preset's (DINO's operation order for dino)
        self.patch_size = model.patch_size
        self.embed_dim = model.embed_dim

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = normalize(frames.to(self.device, non_blocking=True).float(), self._mean, self._std)  # (B, 3, H, W)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        with autocast:
            feats = self.model.features(x, pos_interp=self.pos_interp, attention=self.attention)  # (B, h, w, D)
        return feats.float()
