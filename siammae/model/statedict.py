"""Reading weight files: a checkpoint file as a dict, the ViT encoder state dict inside it, its architecture.

Everything here reads with ``weights_only=True`` (no code in a pickle runs) and turns every way a file can be wrong
(empty, truncated, an HTML page, a pickle of objects, a state dict with a key missing or a tensor of the wrong rank)
into one :class:`CheckpointError` line naming the file and, where one is at fault, the key. Both the loader
(:mod:`siammae.model.checkpoint`) and the download check (:mod:`siammae.model.weights`, before a file is renamed into
the cache) use it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch

from siammae.errors import CheckpointError
from siammae.model.config import ModelConfig
from siammae.model.pos_embed import sincos_2d

# keys of foreign checkpoints that belong to heads / decoders, not to the encoder (dropped on load)
FOREIGN_DROP = re.compile(r"^(head\.|head_drop|fc_norm\.|decoder_|mask_token$|pre_logits\.)")
# a foreign state dict may sit under one of these keys (DINO: teacher / student; MAE: model; others)
STATE_KEYS = ("teacher", "student", "model", "state_dict", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "encoder.", "_orig_mod.")


def read_checkpoint(path: str | os.PathLike, map_location="cpu", label: str | None = None) -> dict:
    """Load a checkpoint file as a dict with ``weights_only=True``; every failure is a one-line CheckpointError.

    ``label`` names the file in messages when ``path`` is a temporary name (a download being checked)."""
    path = Path(path)
    name = label or str(path)
    if len(name) > 200:  # a name no file system holds: shown cut, with its length
        name = f"{name[:60]}... ({len(name)} characters)"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except OSError as e:  # a name too long, a folder without permission
        raise CheckpointError(f"{name}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{name}: is a folder, expected a checkpoint file")
    if st.st_size == 0:
        raise CheckpointError(f"{name}: file is empty")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, name, map_location)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # torch.save writes a zip; legacy files are pickles
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
            raise CheckpointError(f"{name}: an HTML page, not a PyTorch checkpoint (a proxy's or a login page?)")
        raise CheckpointError(f"{name}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    obj = _torch_load(path, name, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def _torch_load(path: Path, name: str, map_location):
    """``torch.load(weights_only=True)``, its failures as one line."""
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol: torch warns, then fails or loads; we report
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{name}: file is truncated or corrupt ({e})") from e
    except (pickle.UnpicklingError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{name}: not a PyTorch checkpoint, or it holds objects other than tensors ({msg})"
        ) from e
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{name}: file is truncated or corrupt ({first})") from e
    return obj


def _read_safetensors(path: Path, name: str, map_location) -> dict:
    """A state dict; or, for a shipped siammae encoder (:mod:`siammae.model.packaged`), its siammae checkpoint with
    the fp16 tensors as fp32."""
    from safetensors import safe_open

    from siammae.model.packaged import FORMAT

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
        if meta.get("format") != FORMAT:
            return state
        config = json.loads(meta["config"])
    except Exception as e:  # safetensors raises several unrelated types for a corrupt header; json, a missing key
        raise CheckpointError(f"{name}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return {"format": "siammae", "version": 1, "kind": "encoder", "config": config, "model": state}


def check_finite(path: Path, state: dict) -> None:
    """Every floating tensor of ``state`` finite; else a CheckpointError naming the first that is not (a NaN in the
    weights makes every frame after the first background, silently)."""
    for key, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "inf"
            raise CheckpointError(f"{path}: {key} holds {what} values: the weights are broken (a diverged run?)")


def find_state_dict(path: Path, ckpt: dict) -> dict:
    """The tensors of a foreign checkpoint: the dict itself, or the one under a key of :data:`STATE_KEYS`."""
    for key in STATE_KEYS:
        if key in ckpt and isinstance(ckpt[key], dict):
            return find_state_dict(path, ckpt[key])
    state = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{path}: no weights found (expected a siammae checkpoint, a state dict, or one under "
            f"{', '.join(repr(k) for k in STATE_KEYS)})"
        )
    return state


def strip_prefixes(state: dict) -> dict:
    """Keys without the wrappers' prefixes (``module.``, ``backbone.``, ``encoder.``, ``_orig_mod.``)."""
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


def encoder_state(path: Path, ckpt: dict) -> dict:
    """The ViT encoder's state dict inside a foreign checkpoint: found, prefixes stripped, heads / decoder dropped."""
    state = strip_prefixes(find_state_dict(path, ckpt))
    return {k: v for k, v in state.items() if not FOREIGN_DROP.match(k)}


def _tensor(path: Path, state: dict, key: str, ndim: int, what: str) -> torch.Tensor:
    """``state[key]`` as a tensor of ``ndim`` dimensions, none of them empty; a CheckpointError naming the key."""
    if key not in state:
        raise CheckpointError(f"{path}: not a ViT state dict: no {key!r} ({what})")
    t = state[key]
    if not isinstance(t, torch.Tensor) or t.ndim != ndim or 0 in t.shape:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise CheckpointError(f"{path}: {key} has shape {shape}, expected {what} with no empty dimension")
    return t


def infer_config(path: Path, state: dict) -> ModelConfig:
    """Encoder architecture from the shapes of a ViT state dict (heads: 64 channels each, as every standard ViT)."""
    proj = _tensor(path, state, "patch_embed.proj.weight", 4, "(D, C, p, p)")
    dim, chans, p = proj.shape[0], proj.shape[1], proj.shape[-1]
    if proj.shape[-2] != p:
        raise CheckpointError(f"{path}: patch_embed.proj.weight has shape {tuple(proj.shape)}: patches not square")
    pos = _tensor(path, state, "pos_embed", 3, f"(1, 1 + grid, {dim})")
    if pos.shape[0] != 1 or pos.shape[-1] != dim or pos.shape[1] < 2:
        raise CheckpointError(f"{path}: pos_embed has shape {tuple(pos.shape)}, expected (1, 1 + grid, {dim})")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise CheckpointError(f"{path}: ViT state dict has no transformer blocks")
    g = int(round((pos.shape[1] - 1) ** 0.5))
    if g * g != pos.shape[1] - 1:
        raise CheckpointError(f"{path}: pos_embed of {pos.shape[1]} rows is not [CLS] + a square grid")
    fc1 = _tensor(path, state, "blocks.0.mlp.fc1.weight", 2, f"(hidden, {dim})")
    if fc1.shape[1] != dim:
        raise CheckpointError(f"{path}: blocks.0.mlp.fc1.weight has shape {tuple(fc1.shape)}, expected (hidden, {dim})")
    heads = max(1, dim // 64)
    table = pos.float().reshape(-1, dim)
    is_sincos = dim % 4 == 0 and torch.allclose(table, sincos_2d(dim, g, g), atol=1e-5)
    try:
        return ModelConfig(
            img_size=g * p,
            patch_size=p,
            in_chans=chans,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=fc1.shape[0] / dim,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
            pos_embed="sincos" if is_sincos else "learned",
        )
    except ValueError as e:  # e.g. a width that is no multiple of 4 or of its heads
        raise CheckpointError(f"{path}: not a ViT siammae can build ({e})") from e
