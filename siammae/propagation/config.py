"""The named presets of the public protocols: one :class:`Preset` per protocol, in one registry.

A preset is everything that makes a run follow a reference script: the propagation constants
(:class:`PropagationConfig`, every constant of docs/PROTOCOL.md), the input rule
(:class:`~siammae.propagation.inputs.InputConfig`: size rule, resize, mean / std) and the task it is the protocol
of (masks, keypoints, parts). ``dino`` reproduces facebookresearch/dino ``eval_video_segmentation.py``; the
``siammae-*`` presets reproduce the CRW test code (ajabri/videowalk ``code/test.py``) that CropMAE and SiamMAE
evaluate with, at SiamMAE's constants (paper, DAVIS table: top-k 7, queue 20, neighbourhood 20).

    preset = get_preset("dino").replace(topk=7, size="480x880")   # overrides, validated here
    preset_names()                                                # ('dino', 'siammae-davis', ...)
    default_preset("keypoints")                                   # 'siammae-jhmdb'

The names are written only here (and in docs and tests); everything else asks the registry, the way timm's
``register_model`` / ``create_model`` work. This module loads no torch: ``--help`` lists the names from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from siammae.config_rules import apply, setting
from siammae.data.transforms import DINO_STD
from siammae.errors import InputError
from siammae.model.config import FEATURE_ATTENTIONS
from siammae.propagation.inputs import InputConfig, parse_size

NEIGHBOURHOODS = ("square", "circle")
UPSAMPLINGS = ("patch", "image")


@dataclass(frozen=True)
class PropagationConfig:
    """Constants of k-nearest-neighbour label propagation.

    topk: number of context keys each query patch takes its label from (over all context frames jointly).
    temperature: softmax temperature T of the weights, w_ij = softmax_j(s_ij / T) over the top-k.
    n_last: number of preceding frames (with their propagated soft labels) in the context, besides the
        reference frames.
    radius: neighbourhood size in patches; ``None`` means no restriction (DINO's
        ``--size_mask_neighborhood 0``).
    neighbourhood: "square" keeps keys with |dy| <= radius and |dx| <= radius (DINO); "circle" keeps keys with
        dy^2 + dx^2 < radius^2 (CRW ``MaskedAttention``).
    restrict_reference: apply the neighbourhood to the reference frames (frame 0 and frames given a mask
        later) too (DINO), or only to the last n frames (CRW, whose first frame is unrestricted long memory).
    prefill_queue: start the queue with n copies of frame 0 and its labels. CRW's data loader pads every video
        with n copies of frame 0 (``VOSDataset.make_paths``), so its first frames see frame 0 n+1 times.
    norm_mask: before the argmax, min-max normalise each class map whose maximum is > 0 (DINO ``norm_mask``).
    upsample: "patch": bilinear upsampling by the patch size, then a nearest resize to the output size (DINO);
        "image": bilinear resize straight to the output size (CRW ``dump_predictions``).
    keep_ties: DINO's weights: exp(s / T) in fp32 divided by their sum, every key tied with the k-th weight kept
        (``aff[aff < tk_val_min] = 0``); False: exactly k keys, softmax (CRW). Bit for bit on the CPU path.
    """

    topk: int = setting(5, "context keys each query patch takes its label from", lo=1)
    temperature: float = setting(0.1, "softmax temperature of the top-k weights", lo=0, lo_open=True)
    n_last: int = setting(7, "preceding frames in the context, besides the reference frames", lo=0)
    # int | float: a radius given as 12 stays 12 (it is part of a run's stored settings)
    radius: int | float | None = setting(12, "neighbourhood size in patches; None: no restriction", lo=0)
    neighbourhood: str = setting("square", "square (DINO) or circle (CRW)", choices=NEIGHBOURHOODS)
    restrict_reference: bool = setting(True, "the neighbourhood applies to the reference frames too")
    prefill_queue: bool = setting(False, "start the queue with n_last copies of frame 0")
    norm_mask: bool = setting(True, "min-max normalise each class map before the argmax")
    upsample: str = setting("patch", "patch (DINO) or image (CRW)", choices=UPSAMPLINGS)
    keep_ties: bool = setting(True, "DINO's weights, ties with the k-th kept; False: exactly k keys, softmax")

    def __post_init__(self):
        apply(self)

    def replace(self, **overrides) -> PropagationConfig:
        """A copy with the given fields replaced (validated), e.g. ``cfg.replace(topk=7, radius=None)``."""
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise InputError(
                f"unknown propagation setting(s) {', '.join(unknown)}; valid settings: {', '.join(fields)}"
            )
        return dataclasses.replace(self, **overrides)


TASKS = ("masks", "keypoints", "parts")  # what a preset propagates: object masks, JHMDB joints, VIP part labels
_PROPAGATION_FIELDS = tuple(f.name for f in dataclasses.fields(PropagationConfig))


@dataclass(frozen=True)
class Preset:
    """A named protocol: propagation constants, input rule and task, as one frozen value.

    name: the registry name (``siammae-track --preset``). task: one of :data:`TASKS`, the task whose default
    this preset may be. propagation: the k-NN constants. inputs: the input rule (size rule, resize, mean / std).
    size: the ``size`` override applied by :meth:`replace` (parsed: a short side or (short, long)), None when the
    input rule is the preset's own. attention: how a PyTorch encoder computes its features
    (:data:`~siammae.model.config.FEATURE_ATTENTIONS`): ``dino`` follows DINO's operation order on a CPU in fp32
    ("auto": its features bit for bit), the CRW presets, whose reference has no such order, the fused kernel
    ("sdpa"); ``siammae-track --attention`` / ``siammae-eval --attention`` replace it.
    """

    name: str
    task: str
    propagation: PropagationConfig
    inputs: InputConfig
    size: int | tuple[int, int] | None = None
    attention: str = "sdpa"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"preset name must be a non-empty string, got {self.name!r}")
        if self.task not in TASKS:
            raise InputError(f"preset task must be one of {TASKS}, got {self.task!r}")
        if not isinstance(self.propagation, PropagationConfig) or not isinstance(self.inputs, InputConfig):
            raise InputError("a preset holds a PropagationConfig and an InputConfig")
        if self.size is not None and parse_size(self.size) != self.size:
            raise InputError(f"preset size must be a short side or a (short, long) pair, got {self.size!r}")
        if self.attention not in FEATURE_ATTENTIONS:
            raise InputError(f"preset attention must be one of {FEATURE_ATTENTIONS}, got {self.attention!r}")

    def replace(self, size=None, attention=None, **overrides) -> Preset:
        """A copy with propagation constants, the input size and / or the attention order replaced, all validated
        here: ``preset.replace(topk=7, radius=None, size="480x880", attention="sdpa")``. ``size``: a short side
        (``480``, ``"480"``) or a fixed size (``(480, 880)``, ``"480x880"``), see
        :func:`~siammae.propagation.inputs.parse_size`; ``attention``: one of
        :data:`~siammae.model.config.FEATURE_ATTENTIONS`; None keeps the current one. Unknown names are an
        :class:`InputError` listing the valid ones."""
        unknown = sorted(set(overrides) - set(_PROPAGATION_FIELDS))
        if unknown:
            raise InputError(
                f"unknown propagation setting(s) {', '.join(unknown)}; valid settings: "
                f"{', '.join(_PROPAGATION_FIELDS)}, size, attention"
            )
        changes = {"propagation": dataclasses.replace(self.propagation, **overrides)} if overrides else {}
        if size is not None:
            parsed = parse_size(size)
            changes.update(inputs=self.inputs.with_size(parsed), size=parsed)
        if attention is not None:
            changes["attention"] = attention  # checked by __post_init__
        return dataclasses.replace(self, **changes) if changes else self

    def record(self) -> dict:
        """What decides a run's numbers, as stored with its results (``siammae-track`` reports, ``siammae-eval``
        ``settings.json``): the preset's name, every propagation constant, the ``size`` override (None for the
        preset's own) and the input rule it resolved to. JSON-serialisable."""
        return {
            "preset": self.name,
            "propagation": dataclasses.asdict(self.propagation),
            "size": list(self.size) if isinstance(self.size, tuple) else self.size,
            "input": dataclasses.asdict(self.inputs),
            "attention": self.attention,
        }


def check_attention_override(encoder, overrides: dict) -> None:
    """An ``attention`` override chooses how a PyTorch encoder computes its features; an exported encoder
    (``--encoder model.onnx / model.engine``) has its attention fixed in the file, so the two together are an
    :class:`InputError`, raised before anything loads."""
    if encoder is not None and overrides.get("attention") is not None:
        raise InputError(
            f"{encoder}: --attention applies to PyTorch weights (--ckpt); an exported encoder's attention is fixed "
            "when it is exported"
        )


# ------------------------------------------------------------------------------------------------ registry
_PRESETS: dict[str, Preset] = {}
_DEFAULTS: dict[str, str] = {}  # task -> the name of its default preset


def register_preset(preset: Preset, default: bool = False) -> Preset:
    """Add ``preset`` to the registry under its name; ``default``: it is the default of its task (one per task)."""
    if not isinstance(preset, Preset):
        raise TypeError(f"register_preset takes a Preset, got {type(preset).__name__}")
    if preset.name in _PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    if default and preset.task in _DEFAULTS:
        raise ValueError(f"task {preset.task!r} already has a default preset, {_DEFAULTS[preset.task]!r}")
    _PRESETS[preset.name] = preset
    if default:
        _DEFAULTS[preset.task] = preset.name
    return preset


def preset_names() -> tuple[str, ...]:
    """The registered preset names, in registration order."""
    return tuple(_PRESETS)


def default_preset(task: str = "masks") -> str:
    """The name of the default preset of ``task`` (one of :data:`TASKS`)."""
    if task not in _DEFAULTS:
        raise InputError(f"task {task!r} has no default preset; tasks: {', '.join(_DEFAULTS)}")
    return _DEFAULTS[task]


def get_preset(name: str | Preset | None = None, size=None, **overrides) -> Preset:
    """The preset ``name`` (a registered name, a :class:`Preset`, or None for the default of "masks") with the
    given overrides (see :meth:`Preset.replace`), e.g. ``get_preset("dino", topk=7, size=240)``."""
    if name is None:
        name = default_preset("masks")
    if isinstance(name, Preset):
        preset = name
    elif isinstance(name, str) and name in _PRESETS:
        preset = _PRESETS[name]
    else:
        raise InputError(f"unknown propagation preset {name!r}; valid presets: {', '.join(_PRESETS)}")
    return preset.replace(size=size, **overrides)


# DINO eval_video_segmentation.py: --topk 5, temperature 0.1 (hard-coded), --n_last_frames 7,
# --size_mask_neighborhood 12 (square, every context frame), norm_mask on the upsampled output; read_frame resizes
# the uint8 frame to short side 480, the long side floored to 64, and normalises with std (0.228, 0.224, 0.225).
register_preset(
    Preset(
        name="dino",
        task="masks",
        propagation=PropagationConfig(),
        inputs=InputConfig(short_side=480, multiple=64, std=DINO_STD, resize="uint8"),
        attention="auto",  # DINO's operation order on a CPU in fp32: its features bit for bit
    )
)

# CRW test.py as used by CropMAE / SiamMAE: SiamMAE's table gives top-k 7, queue 20, neighbourhood 20;
# CropMAE's temperature 0.7; MaskedAttention circle (distance < radius) on the short-term frames only. Input: CropMAE's
# crop_size per benchmark (DAVIS [480, 880], JHMDB [320, 320], VIP [880]), float resize, ImageNet normalisation.
_CRW = PropagationConfig(
    topk=7,
    temperature=0.7,
    n_last=20,
    radius=20,
    neighbourhood="circle",
    restrict_reference=False,
    prefill_queue=True,
    norm_mask=False,
    upsample="image",
    keep_ties=False,
)
register_preset(Preset("siammae-davis", "masks", _CRW, InputConfig(size=(480, 880))), default=True)
register_preset(  # docs/PROTOCOL.md: top-k 10, queue 20, neighbourhood 8 on VIP (SiamMAE Table 4b)
    Preset(
        "siammae-vip",
        "parts",
        _CRW.replace(topk=10, radius=8),
        InputConfig(short_side=None, long_side=880, multiple=64),
    ),
    default=True,
)
register_preset(  # docs/PROTOCOL.md: top-k 7 on JHMDB, the DAVIS constants otherwise
    Preset("siammae-jhmdb", "keypoints", _CRW, InputConfig(size=(320, 320))), default=True
)
