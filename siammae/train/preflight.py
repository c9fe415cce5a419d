"""Checks of a training run that need neither torch nor a model: run before either is loaded, so that a typo in
``--data`` or an ``--out`` that holds another run is refused in a fraction of a second, not after seconds of
imports (``siammae-train`` calls :func:`check_run` before importing :mod:`siammae.train.loop`; ``train`` calls it
too, so the Python API refuses the same things).

Also the machine-dependent choices: DataLoader workers capped by the CPU cores this process may use, and the
refusal of the paper-sized defaults (ViT-S/16, batch 2048) on a machine without CUDA.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from siammae.errors import InputError, OutputError

_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")

# what to suggest for a run on the CPU: the 'tiny' model (64 px) at 16 pairs per step ran at ~5.5 pairs/s on the
# 2 shared cores of the development machine from 480p JPEG folders (decoding dominates): 200 steps in ~10 minutes.
# lr 2e-3 as siammae-demo: the MAE rule (blr x 16 / 256 = 1e-5) is far too small for a 200-step run
CPU_SUGGESTION = "--model tiny --batch-size 16 --total-steps 200 --lr 2e-3"


# --------------------------------------------------------------------------------------- checkpoints (no torch)
def checkpoint_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | os.PathLike) -> list[Path]:
    """Training checkpoints in ``out`` (``checkpoints/step_XXXXXXXX.pt``), oldest first."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP_FILE.match(p.name))


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out)
    return ckpts[-1] if ckpts else None


# --------------------------------------------------------------------------------------------- the run's inputs
def check_run(cfg) -> None:
    """Refuse a run whose data is missing or whose ``out`` would be clobbered (a file, or another run's
    checkpoints without ``resume``); one InputError naming the option. Reads only the file system."""
    from siammae.data.shards import is_url

    if not cfg.data:
        raise InputError("no training data given (--data FOLDER, a video file, a .txt list or a prepared folder)")
    for d in cfg.data:
        if not is_url(d) and not os.path.exists(d):
            raise InputError(f"--data {d}: no such file or folder")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    latest = latest_checkpoint(out)
    if latest is not None and not cfg.resume:
        raise InputError(
            f"{out} already holds checkpoints (latest {latest.name}); pass --resume to continue that run "
            "or choose another --out"
        )


# ------------------------------------------------------------------------------------------------ the machine
def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def capped_workers(requested: int, processes_per_machine: int = 1, cores: int | None = None) -> int:
    """DataLoader workers for one of ``processes_per_machine`` training processes: at most its share of the cores
    less one (the training process itself needs a core; more workers than cores only take turns). The batches do
    not depend on the number of workers (samples are seeded by position), so capping changes speed only."""
    cores = usable_cores() if cores is None else cores
    share = max(1, cores // max(1, processes_per_machine))
    return max(0, min(requested, share - 1))


def check_machine(cfg, device_type: str) -> None:
    """Refuse the paper-sized defaults where they cannot run: without CUDA, a run that left both ``model`` and
    ``batch_size`` at their defaults (ViT-S/16, 2048 pairs: minutes per step on a CPU) is an InputError naming
    CPU-sized settings. A model or batch size the user chose is run as given."""
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(cfg)}
    if device_type != "cuda" and cfg.model == defaults["model"] and cfg.batch_size == defaults["batch_size"]:
        raise InputError(
            f"no CUDA device: the default recipe (--model {cfg.model}, --batch-size {cfg.batch_size}) needs a GPU "
            f"(one step would take many minutes on this CPU); for a CPU run pass e.g. {CPU_SUGGESTION}, or set "
            "--model and --batch-size yourself to run them as given"
        )
