"""Checkpoints: siammae's own format, and the encoder weights people already have (DINO, MAE, timm).

A siammae checkpoint is ``{"format": "siammae", "version": 1, "kind": "siammae" | "encoder", "config": {...},
"model": state_dict, ...extra}``, written atomically, loaded with ``weights_only=True`` and strict key matching:
a missing or unexpected key is an error, never a warning.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from siammae.errors import CheckpointError
from siammae.io import atomic_stream
from siammae.model.config import LIMITS, MAX_MLP_RATIO, ModelConfig
from siammae.model.encoder import ViTEncoder
from siammae.model.hub import (
    delete_hint,
    file_sha256,  # noqa: F401  (re-exported: reports hash weights with it)
)
from siammae.model.named import import_hint
from siammae.model.provenance import Provenance
from siammae.model.registry import model_config
from siammae.model.siammae import SiamMAE
from siammae.model.statedict import check_finite, encoder_state, infer_config, read_checkpoint  # noqa: F401
from siammae.model.weights import Weights, resolve_weights

FORMAT = "siammae"
VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``model`` (a SiamMAE or a ViTEncoder) and ``extra`` entries to ``path`` atomically."""
    model = unwrap(model)
    if not isinstance(model, (SiamMAE, ViTEncoder)):
        raise TypeError(f"save_checkpoint takes a SiamMAE or ViTEncoder, got {type(model).__name__}")
    kind = "siammae" if isinstance(model, SiamMAE) else "encoder"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    path = Path(path)
    # through a writer, not a path: a full disk is then "cannot write PATH: No space left on device", not torch's
    # "[enforce fail at inline_container.cc] unexpected pos"
    with atomic_stream(path) as f:
        torch.save(payload, f)
    return path


def load_model(
    path: str | os.PathLike, arch: str | None = None, map_location="cpu", progress: bool = True
) -> SiamMAE | ViTEncoder:
    """Load a model for use: a :class:`SiamMAE` from a siammae checkpoint, a :class:`ViTEncoder` from encoder
    weights (siammae encoder export, DINO ``teacher`` / ``student``, MAE ``model``, a timm state dict as ``.pth``
    or ``.safetensors``). For foreign weights the architecture is inferred from the shapes, or taken from ``arch``
    (a registered name, see ``list_models()``). The model is returned in eval mode.

    ``path`` may also be a weights name (``dino-vits16``, ``mae-vitb16``, ``timm:<name>``, ``hf:<repo>/<file>``;
    :mod:`siammae.model.weights`), downloaded on first use (progress bar on stderr unless ``progress=False``); an
    existing path wins over a name. ``model.provenance`` is the :class:`Provenance` of the weights (name or path,
    sha256, verified against a published hash or not, licence): what reports carry.
    """
    weights = resolve_weights(path, progress)
    with _cache_hint(weights):
        file = weights.path
        ckpt = read_checkpoint(file, map_location)
        model = _load_native(file, ckpt) if ckpt.get("format") == FORMAT else _load_foreign(file, ckpt, arch)
    model.provenance = weights.provenance
    return model.eval()


@contextlib.contextmanager
def _cache_hint(weights: Weights):
    """A load error of a cached named file says which file to delete (so that the next run fetches it again)."""
    try:
        yield
    except CheckpointError as e:
        if not weights.in_cache or "delete " in str(e):
            raise
        raise CheckpointError(f"{e}; {delete_hint(weights.path)}{import_hint(weights.spec)}") from None


def check_stored_config(path: Path, stored) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint's ``config`` entry, its sizes checked against :data:`LIMITS`
    first (so a hostile or corrupt file cannot make the loader allocate terabytes); a CheckpointError otherwise."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: the 'config' entry is a {type(stored).__name__}, expected a dict")
    for key, (lo, hi) in LIMITS.items():
        value = stored.get(key)
        if value is None:
            continue  # the default applies
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CheckpointError(f"{path}: config {key}={value!r} is not an integer in {lo}..{hi}")
    ratio = stored.get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= MAX_MLP_RATIO:
        raise CheckpointError(f"{path}: config mlp_ratio={ratio!r} is not a number in (0, {MAX_MLP_RATIO:g}]")
    try:
        return ModelConfig.from_dict(stored)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from e


def _build_loaded(path: Path, model_class: type, cfg: ModelConfig, state: dict) -> nn.Module:
    """The model that ``cfg`` describes, holding ``state``.

    Built on the meta device first (no memory, no initialisation), so that a file whose config does not describe its
    tensors fails on keys and shapes before the real model exists; then given uninitialised memory and loaded
    strictly, which sets every value (strict: same keys; the models have no buffers outside their state dicts).
    Skipping the random initialisation that the weights would overwrite saves its time (0.18 s for a ViT-S/16 on a
    2-core CPU, 0.66 s for a ViT-B/16) from every command's start-up."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(state).__name__}, expected a state dict")
    with torch.device("meta"):
        skeleton = model_class(cfg)
    _check_fit(path, skeleton.state_dict(), state)
    model = _materialise(skeleton)
    _load_strict(path, model, state)
    return model


def _materialise(skeleton: nn.Module) -> nn.Module:
    """``skeleton.to_empty(device="cpu")`` by hand: every meta parameter and buffer replaced, in place, by
    uninitialised CPU memory of its shape and dtype. (``to_empty`` goes through ``torch._refs.empty_like`` for meta
    tensors, which imports sympy and torch.fx's symbolic shapes: 0.3 s.)"""
    for module in skeleton.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(b.shape, dtype=b.dtype))
    return skeleton


@dataclass(frozen=True)
class EncoderInit:
    """Encoder weights to start training from (``siammae-train --init``): the ViTEncoder state dict, the kind of
    its position table, and where it came from."""

    state: dict = field(repr=False)
    pos_embed: str  # "learned" (DINO, timm) or "sincos" (MAE, siammae): the model is built to match
    provenance: Provenance

    @property
    def weights(self) -> dict:
        """The record a training run's report carries (:meth:`Provenance.to_dict`)."""
        return self.provenance.to_dict()


def read_encoder_init(spec: str | os.PathLike, progress: bool = True) -> EncoderInit:
    """The encoder weights of ``spec`` (a name or a path: DINO / MAE / timm / siammae, whole SiamMAE or encoder);
    a SiamMAE checkpoint gives its encoder, its decoder is left out."""
    weights = resolve_weights(spec, progress)
    with _cache_hint(weights):
        ckpt = read_checkpoint(weights.path)
        if ckpt.get("format") == FORMAT:
            model = _load_native(weights.path, ckpt)
            encoder = model.encoder if isinstance(model, SiamMAE) else model
            return EncoderInit(encoder.state_dict(), encoder.config.pos_embed, weights.provenance)
        state = encoder_state(weights.path, ckpt)
        return EncoderInit(state, infer_config(weights.path, state).pos_embed, weights.provenance)


def init_encoder(encoder: ViTEncoder, init: EncoderInit) -> None:
    """Load ``init`` into ``encoder`` strictly: a missing, unexpected or differently shaped key is an error naming
    the keys (e.g. ViT-S/8 weights into a ViT-S/16 model: ``patch_embed.proj.weight``, ``pos_embed``)."""
    _load_strict(Path(init.provenance.weights), encoder, init.state)


def _load_native(path: Path, ckpt: dict) -> nn.Module:
    version = ckpt.get("version")
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is not supported (this siammae reads {VERSION})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: siammae checkpoint lacks its {key!r} entry")
    cfg = check_stored_config(path, ckpt["config"])
    model_class = SiamMAE if ckpt.get("kind", "siammae") == "siammae" else ViTEncoder
    return _build_loaded(path, model_class, cfg, ckpt["model"])


def _load_foreign(path: Path, ckpt: dict, arch: str | None) -> ViTEncoder:
    state = encoder_state(path, ckpt)
    cfg = infer_config(path, state)
    if arch is not None:
        try:
            named = model_config(arch)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        mismatch = [
            f"{k} {getattr(named, k)} vs {getattr(cfg, k)} in the file"
            for k in ("patch_size", "embed_dim", "depth")
            if getattr(named, k) != getattr(cfg, k)
        ]
        if mismatch:
            raise CheckpointError(f"{path}: weights do not match --arch {arch}: {'; '.join(mismatch)}")
        cfg = model_config(
            arch,
            img_size=cfg.img_size,
            pos_embed=cfg.pos_embed,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
        )
    check_stored_config(path, cfg.to_dict())  # sizes inferred from a hostile file are bounded too
    return _build_loaded(path, ViTEncoder, cfg, state)


def _load_strict(path: Path, model: nn.Module, state: dict) -> None:
    _check_fit(path, model.state_dict(), state)
    check_finite(path, state)
    model.load_state_dict(state, strict=True)


def _check_fit(path: Path, own: dict, state: dict) -> None:
    """Same keys, same shapes; a CheckpointError naming the first differences otherwise."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"{path}: weights do not fit the model: {'; '.join(parts)}")
    not_tensors = sorted(k for k in own if not isinstance(state[k], torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: entries {_few(not_tensors)} are not tensors")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch (file vs model): {_few(bad)}")


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
