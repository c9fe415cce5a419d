"""Checkpoints: siammae's own format, and the encoder weights people already have (DINO, MAE, timm).

A siammae checkpoint is ``{"format": "siammae", "version": 1, "kind": "siammae" | "encoder", "config": {...},
"model": state_dict, ...extra}``, written atomically, loaded with ``weights_only=True`` and strict key matching:
a missing or unexpected key is an error, never a warning.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from siammae.errors import CheckpointError
from siammae.io import atomic_write
from siammae.model.config import ModelConfig
from siammae.model.encoder import ViTEncoder
from siammae.model.hub import file_sha256  # noqa: F401  (re-exported: reports hash weights with it)
from siammae.model.pos_embed import sincos_2d
from siammae.model.registry import model_config
from siammae.model.siammae import SiamMAE
from siammae.model.weights import resolve_weights

FORMAT = "siammae"
VERSION = 1

# keys of foreign checkpoints that belong to heads / decoders, not to the encoder (dropped on load)
_FOREIGN_DROP = re.compile(r"^(head\.|head_drop|fc_norm\.|decoder_|mask_token$|pre_logits\.)")
# a foreign state dict may sit under one of these keys (DINO: teacher / student; MAE: model; others)
_STATE_KEYS = ("teacher", "student", "model", "state_dict", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "_orig_mod.")


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
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint file as a dict with ``weights_only=True``; every failure is a one-line CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises several unrelated types for a corrupt header
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # torch.save writes a zip; legacy files are pickles
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol: torch warns, then fails or loads; we report
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: file is truncated or corrupt ({e})") from e
    except (pickle.UnpicklingError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or it holds objects other than tensors ({msg})"
        ) from e
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: file is truncated or corrupt ({first})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def load_model(
    path: str | os.PathLike, arch: str | None = None, map_location="cpu", progress: bool = True
) -> SiamMAE | ViTEncoder:
    """Load a model for use: a :class:`SiamMAE` from a siammae checkpoint, a :class:`ViTEncoder` from encoder
    weights (siammae encoder export, DINO ``teacher`` / ``student``, MAE ``model``, a timm state dict as ``.pth``
    or ``.safetensors``). For foreign weights the architecture is inferred from the shapes, or taken from ``arch``
    (a registered name, see ``list_models()``). The model is returned in eval mode.

    ``path`` may also be a weights name (``dino-vits16``, ``mae-vitb16``, ``timm:<name>``, ``hf:<repo>/<file>``;
    :mod:`siammae.model.weights`), downloaded on first use (progress bar on stderr unless ``progress=False``); an
    existing path wins over a name. ``model.weights_info`` records which weights were loaded: name or path, sha256.
    """
    weights = resolve_weights(path, progress)
    if weights.state is not None:  # timm: loaded by timm, a state dict without its head
        model = _load_foreign(Path(weights.spec), {"model": weights.state}, arch)
    else:
        file = weights.path
        ckpt = read_checkpoint(file, map_location)
        model = _load_native(file, ckpt) if ckpt.get("format") == FORMAT else _load_foreign(file, ckpt, arch)
    model.weights_info = weights.to_dict()
    return model.eval()


@dataclass(frozen=True)
class EncoderInit:
    """Encoder weights to start training from (``siammae-train --init``): the ViTEncoder state dict, the kind of
    its position table, and the record of where it came from (:meth:`Weights.to_dict`)."""

    state: dict = field(repr=False)
    pos_embed: str  # "learned" (DINO, timm) or "sincos" (MAE, siammae): the model is built to match
    weights: dict


def read_encoder_init(spec: str | os.PathLike, progress: bool = True) -> EncoderInit:
    """The encoder weights of ``spec`` (a name or a path: DINO / MAE / timm / siammae, whole SiamMAE or encoder);
    a SiamMAE checkpoint gives its encoder, its decoder is left out."""
    weights = resolve_weights(spec, progress)
    label = Path(weights.spec)
    if weights.state is not None:
        state = weights.state
    else:
        ckpt = read_checkpoint(weights.path)
        if ckpt.get("format") == FORMAT:
            model = _load_native(weights.path, ckpt)
            encoder = model.encoder if isinstance(model, SiamMAE) else model
            return EncoderInit(encoder.state_dict(), encoder.config.pos_embed, weights.to_dict())
        state = _find_state_dict(weights.path, ckpt)
    state = {k: v for k, v in _strip_prefixes(state).items() if not _FOREIGN_DROP.match(k)}
    return EncoderInit(state, infer_config(label, state).pos_embed, weights.to_dict())


def init_encoder(encoder: ViTEncoder, init: EncoderInit) -> None:
    """Load ``init`` into ``encoder`` strictly: a missing, unexpected or differently shaped key is an error naming
    the keys (e.g. ViT-S/8 weights into a ViT-S/16 model: ``patch_embed.proj.weight``, ``pos_embed``)."""
    _load_strict(Path(init.weights["weights"]), encoder, init.state)


def _load_native(path: Path, ckpt: dict) -> nn.Module:
    version = ckpt.get("version")
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is not supported (this siammae reads {VERSION})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: siammae checkpoint lacks its {key!r} entry")
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from e
    model = SiamMAE(cfg) if ckpt.get("kind", "siammae") == "siammae" else ViTEncoder(cfg)
    _load_strict(path, model, ckpt["model"])
    return model


def _find_state_dict(path: Path, ckpt: dict) -> dict:
    for key in _STATE_KEYS:
        if key in ckpt and isinstance(ckpt[key], dict):
            return _find_state_dict(path, ckpt[key])
    state = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{path}: no weights found (expected a siammae checkpoint, a state dict, or one under "
            f"{', '.join(repr(k) for k in _STATE_KEYS)})"
        )
    return state


def _strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def infer_config(path: Path, state: dict) -> ModelConfig:
    """Encoder architecture from the shapes of a ViT state dict (heads: 64 channels each, as every standard ViT)."""
    try:
        proj = state["patch_embed.proj.weight"]  # (D, C, p, p)
        pos = state["pos_embed"]  # (1, 1 + g*g, D)
    except KeyError as e:
        raise CheckpointError(f"{path}: not a ViT state dict (no {e.args[0]!r})") from e
    dim, chans, p = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise CheckpointError(f"{path}: ViT state dict has no transformer blocks")
    g = int(round((pos.shape[1] - 1) ** 0.5))
    if g * g != pos.shape[1] - 1:
        raise CheckpointError(f"{path}: pos_embed of {pos.shape[1]} rows is not [CLS] + a square grid")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    heads = max(1, dim // 64)
    table = pos.float().reshape(-1, dim)
    is_sincos = dim % 4 == 0 and torch.allclose(table, sincos_2d(dim, g, g), atol=1e-5)
    return ModelConfig(
        img_size=g * p,
        patch_size=p,
        in_chans=chans,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        pos_embed="sincos" if is_sincos else "learned",
    )


def _load_foreign(path: Path, ckpt: dict, arch: str | None) -> ViTEncoder:
    state = _strip_prefixes(_find_state_dict(path, ckpt))
    state = {k: v for k, v in state.items() if not _FOREIGN_DROP.match(k)}
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
    model = ViTEncoder(cfg)
    _load_strict(path, model, state)
    return model


def _load_strict(path: Path, model: nn.Module, state: dict) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"{path}: weights do not fit the model: {'; '.join(parts)}")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch (file vs model): {_few(bad)}")
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
