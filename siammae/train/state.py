"""Training checkpoints: everything that an exact resume needs, in the siammae checkpoint format.

``OUT/checkpoints/step_XXXXXXXX.pt`` is a normal siammae checkpoint (``load_model`` reads it) with a ``train`` entry
(step, epoch, the training config, RNG states of python / numpy / torch / CUDA), the optimiser and the loss-scaler
state. The learning rate is a function of the step and the data order a function of (seed, step), so these few
numbers restore the run exactly. Files are written atomically and only the last ``keep_last`` are kept.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from siammae.errors import CheckpointError
from siammae.model.checkpoint import read_checkpoint, save_checkpoint
from siammae.train.preflight import checkpoint_dir, latest_checkpoint, list_checkpoints

__all__ = ["checkpoint_dir", "latest_checkpoint", "list_checkpoints", "checkpoint_path"]


def checkpoint_path(out: str | Path, step: int) -> Path:
    return checkpoint_dir(out) / f"step_{step:08d}.pt"


# ----------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, as tensors and plain lists."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ save / load
def save_training_checkpoint(out, step: int, model, optimizer, scaler, train_state: dict, keep_last: int) -> Path:
    """Write ``step_XXXXXXXX.pt`` atomically, then delete all but the newest ``keep_last`` checkpoints."""
    path = checkpoint_path(out, step)
    save_checkpoint(
        path,
        model,
        train={**train_state, "step": step, "rng": rng_state()},
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
    )
    for old in list_checkpoints(out)[:-keep_last]:
        old.unlink()
    return path


def load_training_checkpoint(path: Path, model, optimizer, scaler) -> dict:
    """Restore model, optimiser and scaler from ``path`` in place; returns its ``train`` entry (step, config, ...)."""
    ckpt = read_checkpoint(path, map_location="cpu")
    for key in ("model", "train", "optimizer", "scaler"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a training checkpoint (no {key!r} entry); cannot resume from it")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: does not fit this model / optimiser ({first})") from e
    if ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    return ckpt["train"]
