"""What ``siammae-attn`` runs, as one library call: an :class:`AttnJob` checked up front, then
:func:`~siammae.attention.maps.render_attention` on the model of the one loader (:mod:`siammae.model.load`).

:meth:`AttnJob.check` refuses, without torch or a model: a missing input, an output of the wrong kind for it,
``--heads`` that do not parse (or, for named weights, name a head the model does not have: ``--heads 0,9`` on
ViT-S's 6 heads), ``--device cuda`` with no GPU, ``--dtype fp16`` on a CPU, an absurd ``--size``, an opacity
outside [0, 1], a missing checkpoint or an unknown weights name. The check and the maps share the torch-free helpers of
:mod:`~siammae.attention.spec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from siammae.attention.spec import check_output, resolve_heads
from siammae.errors import InputError


@dataclass(frozen=True)
class AttnJob:
    """One ``siammae-attn`` command line, as data (see ``siammae-attn --help`` for each field)."""

    input: Path
    ckpt: str | None = None
    arch: str | None = None
    heads: str = "all"
    out: Path | None = None
    preset: str | None = None
    size: int | tuple[int, int] | None = None
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "fp32"
    cmap: str = "inferno"
    alpha: float = 0.6
    labels: bool = True
    progress: bool = True

    def check(self) -> AttnJob:
        """Everything checkable without torch or a model (module docstring); InputError naming the problem."""
        from siammae.model.load import check_input_size, check_run, num_heads
        from siammae.propagation.config import get_preset

        check_run(self.device, self.dtype)
        check_input_size(self.size)
        get_preset(self.preset, size=self.size)  # a bad preset or size
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0 <= self.alpha <= 1):
            raise InputError(f"alpha {self.alpha} is not in [0, 1] (--alpha, the heat-map opacity)")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        if not Path(self.input).exists():
            raise InputError(f"{self.input}: no such file or folder")
        check_output(Path(self.input), self.out)
        resolve_heads(self.heads, num_heads(self.weights))  # the weights last: every input is checked first
        return self

    @cached_property
    def weights(self):
        """The :class:`~siammae.model.load.WeightsChoice` (``ckpt``, or the default weights, or the shipped model
        when they cannot be had), made once without torch."""
        from siammae.model.load import choose_weights

        return choose_weights(self.ckpt)

    def run(self) -> Path:
        """Check, load the model (the one loader), render: the path written."""
        self.check()  # before the imports below: torch
        from siammae.attention.maps import render_attention
        from siammae.model.load import load_weights, resolve_run

        device = resolve_run(self.device, self.dtype)  # before the weights load
        model = load_weights(self.ckpt, arch=self.arch, progress=self.progress, choice=self.weights)
        return render_attention(
            model, self.input, self.out, heads=self.heads, size=self.size, batch_size=self.batch_size,
            device=device, dtype=self.dtype, cmap=self.cmap, alpha=self.alpha, labels=self.labels,
            progress=self.progress, preset=self.preset,
        )  # fmt: skip


__all__ = ["AttnJob"]
