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

import math
import os
import sys
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from siammae.errors import InputError
from siammae.io import parse_json, read_text
from siammae.model.config import DECODERS, ENCODER_MODES, LIMITS, MASKINGS

AUGMENTATIONS = ("spatial", "none", "color", "both")  # the paper's augmentation ablation (docs/PAPER.md)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "device")  # where JPEGs of a prepared data set are decoded

# the TrainConfig fields that are ModelConfig overrides (None: keep the registered model's value)
MODEL_FIELDS = ("mask_ratio_f1", "mask_ratio_f2", "masking", "encoder_mode", "decoder")


@dataclass(frozen=True)
class Rule:
    """What a field accepts besides its type (the type is the field's annotation): an inclusive range ``lo``..``hi``
    (``lo_open``: lo excluded; for pairs, every value), a set of ``choices``, and whether a pair is ordered
    (min <= max). ``help`` is the one-line meaning (shown by ``describe``)."""

    help: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    ordered: bool = False

    def valid(self) -> str:
        """What would be valid, in words: ``valid: a, b``, ``in [0, 1)``, ``>= 1``."""
        if self.choices is not None:
            return f"valid: {', '.join(str(c) for c in self.choices)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        if self.lo is not None and self.hi is not None:
            return f"must be in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"must be {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"must be {'<' if self.hi_open else '<='} {self.hi:g}"
        return ""

    def accepts(self, value) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))


def setting(default, help: str, **rule):
    """A TrainConfig field: its default, its meaning and its :class:`Rule` (in the field's metadata)."""
    return field(default=default, metadata={"rule": Rule(help, **rule)})


_SIZE_LO, _SIZE_HI = LIMITS["img_size"]


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. Each field states its type (annotation) and what is valid (:func:`setting`); one loop
    (:func:`validate`) checks them all, so ``TrainConfig(**d)`` (a checkpoint's stored config, a file, flags)
    gets the same checks and the same messages: ``gap = (8, 4): min must be <= max``."""

    # --- data
    data: tuple[str, ...] = setting((), "folders of videos / frame folders (recursive), video files, .txt lists")
    input_size: int | None = setting(
        None, "crop side in pixels; None: the model's img_size (224)", lo=_SIZE_LO, hi=_SIZE_HI
    )
    gap: tuple[int, int] = setting((4, 48), "frame gap range, inclusive (paper: uniform in 4..48)", lo=1, ordered=True)
    repeat: int = setting(2, "frame pairs drawn from each decoded video (paper: 2)", lo=1)
    crop_scale: tuple[float, float] = setting(
        (0.5, 1.0), "random-resized-crop area range (paper: [0.5, 1])", lo=0, lo_open=True, hi=1, ordered=True
    )
    augment: str = setting("spatial", "spatial: crop + flip (paper); none; color: jitter; both", choices=AUGMENTATIONS)
    workers: int = setting(8, "DataLoader worker processes per training process (capped by the CPU cores)", lo=0)
    decode: str = setting("auto", "prepared data: JPEGs decoded on the device or in the workers", choices=DECODES)
    # --- model (registered name) and the paper's ablations on it
    model: str = setting("vits16", "registered model name")
    mask_ratio_f1: float | None = setting(None, "mask ratio of f1 (model's: 0.0)", lo=0, hi=1, hi_open=True)
    mask_ratio_f2: float | None = setting(None, "mask ratio of f2 (model's: 0.95)", lo=0, hi=1, hi_open=True)
    masking: str | None = setting(None, "masking kind (model's: random)", choices=MASKINGS)
    encoder_mode: str | None = setting(None, "encoder type (model's: siam)", choices=ENCODER_MODES)
    decoder: str | None = setting(None, "decoder type (model's: cross-self)", choices=DECODERS)
    init: str | None = setting(None, "encoder weights to start from: a name (dino-vits16, timm:..) or a path")
    # --- optimisation
    epochs: int = setting(2000, "epochs of the schedule (paper: 2000; 400 for ablations)", lo=1)
    warmup_epochs: float = setting(40.0, "warm-up epochs (at most epochs)", lo=0)
    max_steps: int | None = setting(None, "stop after this many optimiser steps; the schedule is not shortened", lo=1)
    total_steps: int | None = setting(None, "schedule length in optimiser steps (overrides epochs)", lo=1)
    warmup_frac: float | None = setting(None, "warm-up as a fraction of total_steps", lo=0, hi=1)
    batch_size: int = setting(2048, "frame pairs per optimiser step, over all processes and accumulation", lo=1)
    accum_steps: int = setting(1, "gradient accumulation: micro-batches per optimiser step and process", lo=1)
    blr: float = setting(1.5e-4, "base learning rate; lr = blr * batch_size / 256 (MAE)", lo=0, lo_open=True)
    lr: float | None = setting(None, "absolute learning rate, overrides blr", lo=0, lo_open=True)
    min_lr: float = setting(0.0, "learning rate at the end of the cosine", lo=0)
    weight_decay: float = setting(0.05, "AdamW weight decay", lo=0)
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW betas", lo=0, hi=1, hi_open=True)
    clip_grad: float | None = setting(None, "max global gradient norm; None: no clipping (paper)", lo=0, lo_open=True)
    precision: str = setting("auto", "auto: bf16 (or fp16 + scaler) on GPU, fp32 on CPU", choices=PRECISIONS)
    # --- run
    out: str = setting("runs/siammae", "run folder: checkpoints, log.jsonl, vis/, model.pt")
    seed: int = setting(0, "seed of every random choice", lo=0)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    save_every: int = setting(1000, "steps between checkpoints (and one at the end)", lo=1)
    keep_last: int = setting(3, "checkpoints kept; older ones are deleted", lo=1)
    log_every: int = setting(20, "steps between JSONL / TensorBoard records", lo=1)
    vis_every: int = setting(500, "steps between reconstruction PNGs; 0: never", lo=0)
    resume: bool = setting(False, "continue from the latest checkpoint in out")
    quiet: bool = setting(False, "no progress bar")

    def __post_init__(self):
        for name, value in validate(self).items():
            object.__setattr__(self, name, value)

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
        """Build from a plain dict (a config file, a checkpoint); unknown names are refused, the values checked.
        Errors start with ``source``."""
        _check_names(d, source)
        try:
            return cls(**d)
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """Read a JSON or TOML file of field values (flat, field names as keys); ``overrides`` win. An error names
        the file when the bad value came from it."""
        values = read_config_file(path)
        _check_names(values, str(path))
        _check_names(overrides, "overrides")
        try:
            return cls(**{**values, **overrides})
        except InputError as e:
            if getattr(e, "field", None) in overrides:
                raise
            raise InputError(f"config file {path}: {e}") from None

    def replace(self, **changes) -> TrainConfig:
        _check_names(changes, "overrides")
        return replace(self, **changes)


def read_config_file(path: str | os.PathLike) -> dict:
    """A flat dict of field values from ``path`` (``.json`` or ``.toml``); dashes in keys read as underscores."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path}: no such file")
    text = read_text(path, "config file")
    if path.suffix.lower() == ".toml":
        if sys.version_info < (3, 11):
            raise InputError(f"config file {path}: reading TOML needs Python 3.11 (tomllib); use a .json file")
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {path}: invalid TOML ({e})") from e
    elif path.suffix.lower() == ".json":
        d = parse_json(text, f"config file {path}", object)
    else:
        raise InputError(f"config file {path}: expected a .json or .toml file")
    if not isinstance(d, dict):
        raise InputError(f"config file {path}: expected a table of settings, found {type(d).__name__}")
    return {k.replace("-", "_"): v for k, v in d.items()}


# ------------------------------------------------------------------------------------------------ validation
def _check_names(d: dict, source: str) -> None:
    known = [f.name for f in fields(TrainConfig)]
    for name in d:
        if name not in known:
            raise InputError(f"{source}: unknown setting {name!r}; valid: {', '.join(known)}")


def validate(cfg: TrainConfig) -> dict:
    """Check every field of ``cfg`` against its type and :class:`Rule`, then the few relations between fields ->
    the normalised values (lists as tuples, ints as floats where a float is declared, paths as str). The first
    problem is an InputError ``name = value: what is valid``, with ``.field`` set to the field's name."""
    hints = _hints()
    out = {}
    for f in fields(cfg):
        value = _coerce(f.name, getattr(cfg, f.name), hints[f.name])
        rule = f.metadata.get("rule")
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):  # nan passes every comparison
            raise _bad(f.name, value, "must be a finite number")
        if rule is not None and value is not None:
            if not all(rule.accepts(v) for v in items):
                raise _bad(f.name, value, rule.valid())
            if rule.ordered and value[0] > value[1]:
                raise _bad(f.name, value, "needs min <= max")
        out[f.name] = value
    _check_relations(out)
    return out


def _check_relations(v: dict) -> None:
    """The rules that tie two fields together."""
    if v["warmup_frac"] is not None and v["total_steps"] is None:
        raise _bad("warmup_frac", v["warmup_frac"], "applies to total_steps; set total_steps too (or warmup_epochs)")
    if v["warmup_epochs"] > v["epochs"]:
        raise _bad("warmup_epochs", v["warmup_epochs"], f"must be in [0, epochs = {v['epochs']}]")
    if v["batch_size"] % v["repeat"]:
        raise _bad(
            "batch_size", v["batch_size"], f"counts frame pairs and must be a multiple of repeat = {v['repeat']}"
        )


def _bad(name: str, value, why: str) -> InputError:
    e = InputError(f"{name} = {value!r}: {why}")
    e.field = name
    return e


_HINTS: dict = {}


def _hints() -> dict:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _coerce(name: str, value, hint):
    """``value`` as the annotation ``hint`` says (a list becomes a tuple, an int a float where a float is declared,
    a path a str); an InputError naming the field and the type otherwise."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    elif value is None:
        raise _bad(name, value, f"cannot be empty; expected {_TYPE_WORDS.get(hint, 'a list')}")
    if typing.get_origin(hint) is tuple:
        if args and args[-1] is Ellipsis:  # tuple[str, ...]: one value reads as a list of one
            items = (value,) if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(items, (list, tuple)):
                raise _bad(name, value, f"expected a list of {_TYPE_WORDS[args[0]]}s")
            return tuple(_coerce(name, v, args[0]) for v in items)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _bad(name, value, f"expected {len(args)} values (min, max)")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    return _scalar(name, value, hint)


def _scalar(name: str, value, hint):
    if hint is bool and isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, os.PathLike)):
        return str(value)
    raise _bad(name, value, f"must be {_TYPE_WORDS.get(hint, hint)}")


def describe() -> str:
    """Every setting with its type, default, what is valid and its meaning, one per line (for docs and --help)."""
    hints = _hints()
    lines = []
    for f in fields(TrainConfig):
        rule = f.metadata["rule"]
        hint = hints[f.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        valid = f"; {rule.valid()}" if rule.valid() else ""
        valid += ", min <= max" if rule.ordered else ""
        lines.append(f"{f.name} ({kind}, default {f.default!r}{valid}): {rule.help}")
    return "\n".join(lines)
