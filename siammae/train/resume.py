"""``--resume``: a run continues with its own settings, read from its folder, not with today's defaults.

``OUT/run.json`` holds the run's :class:`~siammae.train.config.TrainConfig` (written when the run starts, rewritten
on every resume). Resuming takes those settings; a setting given again on the command line (or in ``--config``)
must be equal to the run's, except the few that change neither the model, nor the data, nor the schedule
(:data:`CHANGEABLE`: when to stop, how fast to load, what to log, where to run). Those are applied and recorded in
``run.json``'s ``resumes`` list. Anything else is refused in one line that names the difference::

    --resume: runs/int was trained with lr = 0.002; --lr 5e-06 would change the schedule (allowed with
    --resume: --max-steps, --workers, ...)

Torch-free: the command checks this before anything heavy loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from siammae.errors import InputError
from siammae.train.config import TrainConfig, read_config_file

# settings that may differ on resume: they change when the run stops, how fast it reads, what it logs, where it runs
CHANGEABLE = (
    "max_steps",
    "workers",
    "decode",
    "device",
    "log_every",
    "vis_every",
    "save_every",
    "save_minutes",
    "keep_last",
    "quiet",
    "resume",
    "out",
)
# what a change of each other setting would alter, for the message
_MODEL = ("model", "input_size", "mask_ratio_f1", "mask_ratio_f2", "masking", "encoder_mode", "decoder", "init")
_DATA = ("data", "gap", "repeat", "crop_scale", "augment", "seed")


def run_file(out: str | os.PathLike) -> Path:
    return Path(out) / "run.json"


def saved_settings(out: str | os.PathLike) -> dict | None:
    """The ``train`` settings recorded in ``OUT/run.json``; None when there is no such run."""
    path = run_file(out)
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
        settings = run["train"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"--resume: {path} is not a run record ({type(e).__name__}: {e}); cannot resume") from e
    if not isinstance(settings, dict):
        raise InputError(f"--resume: {path}: 'train' is not a table of settings; cannot resume")
    return settings


def _what(name: str) -> str:
    if name in _MODEL:
        return "the model"
    if name in _DATA:
        return "the data"
    return "the schedule"


def _show(value) -> str:
    """A recorded value as Python writes it (pairs as tuples: ``(2, 6)``)."""
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _flag(value) -> str:
    """A value as it is typed after its flag: ``4 8``, ``vits16``, ``5e-06``."""
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _same(name: str, old, new) -> bool:
    if name == "data":  # the same files, however they are written (relative to another folder, a link)
        return [os.path.realpath(p) for p in old] == [os.path.realpath(p) for p in new]
    return old == new


def resume_config(out: str | os.PathLike, given: dict, config_file: str | None = None) -> tuple[TrainConfig, dict]:
    """The config to resume the run in ``out`` with -> (config, the changes applied: ``{name: (old, new)}``).

    ``given`` holds the settings named on the command line (TrainConfig field names), ``config_file`` a settings
    file given with ``--resume`` (its values count as given). With no run record in ``out``, the given settings
    start the run (as without ``--resume``)."""
    requested = {**(read_config_file(config_file) if config_file else {}), **given, "out": str(out), "resume": True}
    saved = saved_settings(out)
    if saved is None:
        return TrainConfig.from_dict(requested, "flags"), {}
    base = TrainConfig.from_dict(saved, f"--resume: {run_file(out)}")
    wanted = base.replace(**requested).to_dict()  # each given value checked and normalised like the saved ones
    old = base.to_dict()
    changes = {k: (old[k], wanted[k]) for k in requested if not _same(k, old[k], wanted[k])}
    for name, (was, now) in changes.items():
        if name not in CHANGEABLE:
            allowed = ", ".join(f"--{k.replace('_', '-')}" for k in CHANGEABLE if k not in ("resume", "out"))
            raise InputError(
                f"--resume: {out} was trained with {name} = {_show(was)}; --{name.replace('_', '-')} {_flag(now)} "
                f"would change {_what(name)} (allowed with --resume: {allowed})"
            )
    changes.pop("resume", None)
    changes.pop("out", None)
    return TrainConfig.from_dict(wanted, "flags"), changes
