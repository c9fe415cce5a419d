"""The training configuration: one typed, frozen dataclass, filled from defaults, a JSON / TOML file and flags.

Defaults are the paper's recipe (Appendix A, Table 4a; docs/PAPER.md): frame pairs with a gap drawn uniformly in
4..48, the same random-resized crop (scale 0.5-1) and flip on both frames, two pairs per decoded video, AdamW with
betas (0.9, 0.95) and weight decay 0.05, base lr 1.5e-4 scaled by batch / 256, 40 warm-up epochs then half-cycle
cosine, batch 2048, 2000 epochs. The model's own fields (masking, encoder and decoder types) default to the
registered model's values, which are the paper's; setting one here is an ablation.

``batch_size`` counts frame pairs per optimiser step over all processes and accumulation steps, so a run gives the
same result whichever way the batch is split (see :mod:`siammae.train.sampler`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from siammae.errors import InputError
from siammae.model.config import DECODERS, ENCODER_MODES, LIMITS, MASKINGS

AUGMENTATIONS = ("spatial", "none", "color", "both")  # the paper's augmentation ablation (docs/PAPER.md)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "device")  # where JPEGs of a prepared data set are decoded

# the TrainConfig fields that are ModelConfig overrides (None: keep the registered model's value)
MODEL_FIELDS = ("mask_ratio_f1", "mask_ratio_f2", "masking", "encoder_mode", "decoder")


@dataclass(frozen=True)
class TrainConfig:
    # --- data
    data: tuple[str, ...] = ()  # folders of videos / frame folders (recursive), video files, or .txt lists of them
    input_size: int | None = None  # crop side in pixels; None: the model's img_size (224 for the paper's models)
    gap: tuple[int, int] = (4, 48)  # frame gap range, inclusive (paper: uniform in 4..48)
    repeat: int = 2  # frame pairs drawn from each decoded video (paper: repeated sampling factor 2)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range (paper: [0.5, 1])
    augment: str = "spatial"  # "spatial": crop + flip (paper); "none"; "color": jitter only; "both"
    workers: int = 8  # DataLoader worker processes per training process
    decode: str = "auto"  # prepared data: "device" decodes JPEGs on the GPU, "cpu" in the workers; auto: GPU if any
    # --- model (registered name) and the paper's ablations on it
    model: str = "vits16"
    mask_ratio_f1: float | None = None
    mask_ratio_f2: float | None = None
    masking: str | None = None
    encoder_mode: str | None = None
    decoder: str | None = None
    init: str | None = None  # encoder weights to start from: a name (dino-vits16, mae-vitb16, timm:..) or a path
    # --- optimisation
    epochs: int = 2000  # paper: 2000 for the main table, 400 for ablations
    warmup_epochs: float = 40.0
    max_steps: int | None = None  # stop after this many optimiser steps; the schedule is not shortened
    total_steps: int | None = None  # schedule length in optimiser steps (overrides ``epochs`` for the schedule)
    warmup_frac: float | None = None  # warm-up as a fraction of ``total_steps``; None: warmup_epochs / epochs
    batch_size: int = 2048  # frame pairs per optimiser step, over all processes and accumulation steps
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step and process
    blr: float = 1.5e-4  # base learning rate; lr = blr * batch_size / 256 (MAE convention)
    lr: float | None = None  # absolute learning rate, overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None  # max global gradient norm; None: no clipping (paper, MAE)
    precision: str = "auto"  # "auto": bf16 on a GPU that has it, else fp16 with a scaler; fp32 on CPU
    # --- run
    out: str = "runs/siammae"
    seed: int = 0
    device: str = "auto"
    save_every: int = 1000  # steps between checkpoints (and one at the end)
    keep_last: int = 3  # checkpoints kept; older ones are deleted
    log_every: int = 20  # steps between JSONL / TensorBoard records
    vis_every: int = 500  # steps between reconstruction PNGs; 0: never
    resume: bool = False  # continue from the latest checkpoint in ``out``
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        def bad(name, why):
            raise InputError(f"{name} = {getattr(self, name)!r}: {why}")

        if isinstance(self.data, (str, os.PathLike)):
            object.__setattr__(self, "data", (str(self.data),))
        object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        for name in ("gap", "crop_scale", "betas"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                bad(name, "expected two values (min, max)")
            object.__setattr__(self, name, tuple(value))
        lo, hi = self.gap
        if not 1 <= lo <= hi:
            bad("gap", "needs 1 <= min <= max")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            bad("crop_scale", "needs 0 < min <= max <= 1")
        if self.augment not in AUGMENTATIONS:
            bad("augment", f"valid: {', '.join(AUGMENTATIONS)}")
        if self.precision not in PRECISIONS:
            bad("precision", f"valid: {', '.join(PRECISIONS)}")
        for name, valid in (("masking", MASKINGS), ("encoder_mode", ENCODER_MODES), ("decoder", DECODERS)):
            if getattr(self, name) is not None and getattr(self, name) not in valid:
                bad(name, f"valid: {', '.join(valid)}")
        for name in ("mask_ratio_f1", "mask_ratio_f2"):
            r = getattr(self, name)
            if r is not None and not 0 <= r < 1:
                bad(name, "needs 0 <= ratio < 1")
        for name in ("repeat", "epochs", "batch_size", "accum_steps", "save_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        for name in ("workers", "vis_every", "seed"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for f in fields(self):  # nan / inf pass every comparison below: refuse them first
            values = getattr(self, f.name)
            values = values if isinstance(values, tuple) else (values,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                bad(f.name, "must be a finite number")
        lo, hi = LIMITS["img_size"]
        if self.input_size is not None and not lo <= self.input_size <= hi:
            bad("input_size", f"must be in {lo}..{hi} pixels")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", "must be at least 1")
        if self.decode not in DECODES:
            bad("decode", f"valid: {', '.join(DECODES)}")
        if self.total_steps is not None and self.total_steps < 1:
            bad("total_steps", "must be at least 1")
        if self.warmup_frac is not None:
            if self.total_steps is None:
                bad("warmup_frac", "applies to total_steps; set total_steps too (or use warmup_epochs)")
            if not 0 <= self.warmup_frac <= 1:
                bad("warmup_frac", "must be in [0, 1]")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            bad("warmup_epochs", f"must be in [0, epochs = {self.epochs}]")
        if self.batch_size % self.repeat:
            bad("batch_size", f"counts frame pairs and must be a multiple of repeat = {self.repeat}")
        if (self.lr if self.lr is not None else self.blr) <= 0:
            bad("lr" if self.lr is not None else "blr", "must be positive")
        if self.clip_grad is not None and self.clip_grad <= 0:
            bad("clip_grad", "must be positive")

    # ------------------------------------------------------------------------------------------------ derived
    @property
    def peak_lr(self) -> float:
        """lr after warm-up: ``lr`` if given, else ``blr * batch_size / 256`` (MAE's linear scaling rule)."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def schedule_steps(self, steps_per_epoch: int) -> tuple[int, float]:
        """(schedule length, warm-up length) in optimiser steps: ``total_steps`` and ``warmup_frac`` when given,
        else ``epochs`` and ``warmup_epochs`` at ``steps_per_epoch``."""
        if self.total_steps is not None:
            frac = self.warmup_frac if self.warmup_frac is not None else self.warmup_epochs / self.epochs
            return self.total_steps, frac * self.total_steps
        return self.epochs * steps_per_epoch, self.warmup_epochs * steps_per_epoch

    def model_overrides(self) -> dict:
        """The ablation fields that are set, as :class:`~siammae.model.config.ModelConfig` overrides."""
        out = {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}
        if self.input_size is not None:
            out["img_size"] = self.input_size
        return out

    # ------------------------------------------------------------------------------------------- conversion
    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        """Build from a plain dict (a config file, a checkpoint); names and types are checked."""
        return cls(**_check_types(d, source))

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """Read a JSON or TOML file of field values (flat, field names as keys); ``overrides`` win."""
        d = {**read_config_file(path), **_check_types(overrides, "overrides")}
        return cls.from_dict(d, source=str(path))

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **_check_types(changes, "overrides"))


def read_config_file(path: str | os.PathLike) -> dict:
    """A flat dict of field values from ``path`` (``.json`` or ``.toml``); dashes in keys read as underscores."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path}: no such file")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise InputError(f"config file {path}: reading TOML needs Python 3.11 (tomllib); use a .json file")
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {path}: invalid TOML ({e})") from e
    elif path.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"config file {path}: invalid JSON ({e})") from e
    else:
        raise InputError(f"config file {path}: expected a .json or .toml file")
    if not isinstance(d, dict):
        raise InputError(f"config file {path}: expected a table of settings, found {type(d).__name__}")
    return {k.replace("-", "_"): v for k, v in d.items()}


def _check_types(d: dict, source: str) -> dict:
    """Reject unknown names and values of the wrong type with one line naming both; lists become tuples."""
    hints = typing.get_type_hints(TrainConfig)
    known = [f.name for f in fields(TrainConfig)]
    out = {}
    for name, value in d.items():
        if name not in hints:
            raise InputError(f"{source}: unknown setting {name!r}; valid: {', '.join(known)}")
        out[name] = _coerce(name, value, hints[name], source)
    return out


def _coerce(name: str, value, hint, source: str):
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise InputError(f"{source}: {name} cannot be empty")
    if type(None) in args:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if name == "data" and isinstance(value, (str, os.PathLike)):
            return (str(value),)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{source}: {name} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(name, v, args[0], source) for v in value)
        if len(value) != len(args):
            raise InputError(f"{source}: {name} must have {len(args)} values, got {value!r}")
        return tuple(_coerce(name, v, a, source) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, os.PathLike)):
        return str(value)
    raise InputError(f"{source}: {name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
