"""Label-propagation constants as a frozen dataclass, and the named presets of the public protocols.

Every constant of ../shared/docs/PROTOCOL.md is a field. ``dino`` reproduces facebookresearch/dino
``eval_video_segmentation.py``; the ``siammae-*`` presets reproduce the CRW test code (ajabri/videowalk
``code/test.py``) that CropMAE and SiamMAE evaluate with, at SiamMAE's constants (paper, DAVIS table: top-k 7,
queue 20, neighbourhood 20).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from siammae.errors import InputError

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

    topk: int = 5
    temperature: float = 0.1
    n_last: int = 7
    radius: float | None = 12
    neighbourhood: str = "square"
    restrict_reference: bool = True
    prefill_queue: bool = False
    norm_mask: bool = True
    upsample: str = "patch"
    keep_ties: bool = True

    def __post_init__(self):
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise InputError(f"topk must be an integer >= 1, got {self.topk!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise InputError(f"temperature must be a number > 0, got {self.temperature!r}")
        if isinstance(self.n_last, bool) or not isinstance(self.n_last, int) or self.n_last < 0:
            raise InputError(f"n_last must be an integer >= 0, got {self.n_last!r}")
        if self.radius is not None and (
            isinstance(self.radius, bool)
            or not isinstance(self.radius, (int, float))
            or not math.isfinite(self.radius)
            or self.radius < 0
        ):
            raise InputError(f"radius must be a number >= 0 or None (no restriction), got {self.radius!r}")
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise InputError(f"neighbourhood must be one of {NEIGHBOURHOODS}, got {self.neighbourhood!r}")
        if self.upsample not in UPSAMPLINGS:
            raise InputError(f"upsample must be one of {UPSAMPLINGS}, got {self.upsample!r}")
        for name in ("restrict_reference", "prefill_queue", "norm_mask", "keep_ties"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **overrides) -> PropagationConfig:
        """A copy with the given fields replaced (validated), e.g. ``cfg.replace(topk=7, radius=None)``."""
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise InputError(
                f"unknown propagation setting(s) {', '.join(unknown)}; valid settings: {', '.join(fields)}"
            )
        return dataclasses.replace(self, **overrides)


# DINO eval_video_segmentation.py defaults: --topk 5, temperature 0.1 (hard-coded), --n_last_frames 7,
# --size_mask_neighborhood 12 (square, every context frame), norm_mask on the upsampled output.
_DINO = PropagationConfig()

# CRW test.py as used by CropMAE / SiamMAE: SiamMAE's table gives top-k 7, queue 20, neighbourhood 20;
# CropMAE's temperature 0.7; MaskedAttention circle (distance < radius) on the short-term frames only.
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

PRESETS: dict[str, PropagationConfig] = {
    "dino": _DINO,
    "siammae-davis": _CRW,
    "siammae-vip": dataclasses.replace(_CRW, topk=10),  # PROTOCOL.md: top-k 10 on VIP
    "siammae-jhmdb": _CRW,  # PROTOCOL.md: top-k 7 on JHMDB, the DAVIS constants otherwise
}


def get_preset(name: str = "dino", **overrides) -> PropagationConfig:
    """Return the preset ``name`` with the given fields replaced, e.g. ``get_preset("dino", topk=7)``."""
    if name not in PRESETS:
        raise InputError(f"unknown propagation preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
