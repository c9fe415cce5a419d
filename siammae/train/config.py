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

import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from siammae.config_rules import apply, bad, check_names, setting
from siammae.config_rules import describe as describe_fields
from siammae.config_rules import validate as validate_fields
from siammae.errors import InputError
from siammae.io import parse_json, read_text
from siammae.model.config import DECODERS, ENCODER_MODES, LIMITS, MASKINGS

AUGMENTATIONS = ("spatial", "none", "color", "both")  # the paper's augmentation ablation (docs/PAPER.md)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODES = ("auto", "cpu", "device")  # where JPEGs of a prepared data set are decoded

# the TrainConfig fields that are ModelConfig overrides (None: keep the registered model's value)
MODEL_FIELDS = ("mask_ratio_f1", "mask_ratio_f2", "masking", "encoder_mode", "decoder")


_SIZE_LO, _SIZE_HI = LIMITS["img_size"]


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run. Each field states its type (annotation) and what is valid
    (:func:`~siammae.config_rules.setting`); one loop (:func:`~siammae.config_rules.validate`) checks them all, so
    ``TrainConfig(**d)`` (a checkpoint's stored config, a file, flags) gets the same checks and the same messages:
    ``gap = (8, 4): needs min <= max``. ``siammae-train``'s options are made from these fields and their help."""

    # --- data
    data: tuple[str, ...] = setting(
        (),
        "folders of videos / frame folders (searched recursively), video files or .txt lists of them (repeat for "
        "several), or a folder made by siammae-prepare (or its http(s):// URL)",
    )
    input_size: int | None = setting(
        None, "crop side in pixels; None: the model's img_size (224)", lo=_SIZE_LO, hi=_SIZE_HI
    )
    gap: tuple[int, int] = setting(
        (4, 48), "frame gap range MIN MAX, inclusive (paper: uniform in 4..48)", lo=1, ordered=True
    )
    repeat: int = setting(2, "frame pairs drawn from each decoded video (paper: 2)", lo=1)
    crop_scale: tuple[float, float] = setting(
        (0.5, 1.0), "random-resized-crop area range MIN MAX (paper: [0.5, 1])", lo=0, lo_open=True, hi=1, ordered=True
    )
    augment: str = setting("spatial", "spatial: crop + flip (paper); none; color: jitter; both", choices=AUGMENTATIONS)
    workers: int = setting(8, "DataLoader workers per process (capped at the CPU cores per process less one)", lo=0)
    decode: str = setting(
        "auto",
        "prepared data: decode JPEGs on the device (GPU, batched) or in the CPU workers; auto: device on a GPU",
        choices=DECODES,
    )
    # --- model (registered name) and the paper's ablations on it
    model: str = setting("vits16", "registered model name")
    mask_ratio_f1: float | None = setting(None, "mask ratio of f1 (model's: 0.0)", lo=0, hi=1, hi_open=True)
    mask_ratio_f2: float | None = setting(None, "mask ratio of f2 (model's: 0.95)", lo=0, hi=1, hi_open=True)
    masking: str | None = setting(None, "masking kind (model's: random)", choices=MASKINGS)
    encoder_mode: str | None = setting(None, "encoder type (model's: siam)", choices=ENCODER_MODES)
    decoder: str | None = setting(None, "decoder type (model's: cross-self)", choices=DECODERS)
    init: str | None = setting(
        None,
        "start the encoder from these weights (decoder fresh, shapes must match model): a name (dino-vits16, "
        "mae-vitb16, timm:<name>, hf:<repo>/<file>; siammae-weights list) or a DINO / MAE / timm / siammae file",
    )
    # --- optimisation
    epochs: int = setting(2000, "epochs of the schedule (paper: 2000; 400 for ablations)", lo=1)
    warmup_epochs: float = setting(40.0, "warm-up epochs (at most epochs)", lo=0)
    max_steps: int | None = setting(
        None, "stop after this many optimiser steps; the schedule is not cut short (see total-steps)", lo=1
    )
    total_steps: int | None = setting(None, "schedule length in optimiser steps (instead of epochs)", lo=1)
    warmup_frac: float | None = setting(None, "warm-up as a fraction of total_steps", lo=0, hi=1)
    batch_size: int = setting(
        2048, "frame pairs per optimiser step, over all GPUs / processes and accumulation steps", lo=1
    )
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
    save_minutes: float = setting(
        10.0, "minutes of wall time between checkpoints, beside save_every (0: by steps only)", lo=0
    )
    keep_last: int = setting(3, "checkpoints kept; older ones are deleted", lo=1)
    log_every: int = setting(20, "steps between JSONL / TensorBoard records", lo=1)
    vis_every: int = setting(500, "steps between reconstruction PNGs; 0: never", lo=0)
    resume: bool = setting(False, "continue the run in out from its latest checkpoint")
    quiet: bool = setting(False, "no progress bar")

    def __post_init__(self):
        apply(self, _check_relations)

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
    check_names(TrainConfig, d, source)


def validate(cfg: TrainConfig) -> dict:
    """Every field of ``cfg`` checked against its type and :class:`~siammae.config_rules.Rule`, then the relations
    between fields -> the normalised values (:func:`siammae.config_rules.validate`)."""
    return validate_fields(cfg, _check_relations)


def _check_relations(v: dict) -> None:
    """The rules that tie two fields together."""
    if v["warmup_frac"] is not None and v["total_steps"] is None:
        raise bad("warmup_frac", v["warmup_frac"], "applies to total_steps; set total_steps too (or warmup_epochs)")
    if v["warmup_epochs"] > v["epochs"]:
        raise bad("warmup_epochs", v["warmup_epochs"], f"must be in [0, epochs = {v['epochs']}]")
    if v["batch_size"] % v["repeat"]:
        raise bad("batch_size", v["batch_size"], f"counts frame pairs and must be a multiple of repeat = {v['repeat']}")


def describe() -> str:
    """Every setting with its type, default, what is valid and its meaning, one per line (for docs and --help)."""
    return describe_fields(TrainConfig)
