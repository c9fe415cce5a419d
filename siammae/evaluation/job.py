"""What ``siammae-eval`` runs, as one library call: an :class:`EvalJob` checked up front, then
:func:`~siammae.evaluation.benchmark.evaluate`.

:meth:`EvalJob.check` refuses, without torch or a model: a bad combination of ``--ckpt`` / ``--encoder`` /
``--results``, model options given with ``--results``, ``--device cuda`` on a machine with no GPU, ``--dtype fp16``
on a CPU, an absurd ``--size``, a missing checkpoint or encoder file, and the data set's lists and ``--sequences``.
The weights are chosen here once (:func:`siammae.model.load.choose_weights`: ``--ckpt``, the default weights, or the
shipped model when the default cannot be had), so every input is checked before the offline-weights error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from siammae.errors import InputError

if TYPE_CHECKING:
    from siammae.evaluation.results import EvalResult

MODEL_ONLY = ("preset", "size", "arch", "max_frames")  # options that apply only when a model runs


@dataclass(frozen=True)
class EvalJob:
    """One ``siammae-eval BENCHMARK`` command line, as data (see ``siammae-eval BENCHMARK --help`` for each field;
    ``overrides`` are the preset overrides, ``sequences`` the ``--sequences`` subset)."""

    benchmark: str
    root: Path
    ckpt: str | None = None
    encoder: Path | None = None
    results: Path | None = None
    out: Path | None = None
    split: str | int | None = None
    year: str | None = None
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    size: int | tuple[int, int] | None = None
    arch: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    batch_size: int = 8
    sequences: tuple[str, ...] | None = None
    max_frames: int | None = None
    overwrite: bool = False
    progress: bool = True

    @property
    def runs_model(self) -> bool:
        return self.results is None

    def check(self) -> EvalJob:
        """Everything checkable without torch or a model (module docstring); InputError naming the problem."""
        if self.encoder is not None and (self.ckpt is not None or self.results is not None):
            raise InputError("give one of --ckpt, --encoder (to run a model) or --results (to score predictions)")
        if self.ckpt is not None and self.results is not None:
            raise InputError("give --ckpt to run a model or --results to score existing predictions, not both")
        if not self.runs_model:
            given = [f"--{k.replace('_', '-')}" for k in MODEL_ONLY if getattr(self, k) is not None]
            given += [f"--{k.replace('_', '-')}" for k in self.overrides]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise InputError(f"{', '.join(given)} only {verb} with --ckpt or --encoder, not with --results")
            return self
        from siammae.model.load import check_input_size, check_run
        from siammae.propagation.config import check_attention_override, get_preset

        if self.encoder is None:
            check_run(self.device, self.dtype)
        check_input_size(self.size)
        get_preset(self.preset, size=self.size)  # an unknown preset or a bad size, torch-free
        check_attention_override(self.encoder, self.overrides)
        if self.encoder is not None and not Path(self.encoder).is_file():
            raise InputError(f"{self.encoder}: no such file (an exported encoder: model.onnx / model.engine)")
        return self

    @cached_property
    def weights(self):
        """The :class:`~siammae.model.load.WeightsChoice` of the run (None when an encoder or results run): made
        once, torch-free, after the other checks (:meth:`run` asks for it after the data set's lists)."""
        if not self.runs_model or self.encoder is not None:
            return None
        from siammae.model.load import choose_weights

        return choose_weights(self.ckpt)

    def run(self) -> EvalResult:
        """Check, then :func:`~siammae.evaluation.benchmark.evaluate`: the results (:class:`EvalResult`)."""
        from siammae.evaluation.benchmark import evaluate

        self.check()
        return evaluate(
            self.benchmark, self.root, ckpt=self.ckpt, encoder=self.encoder, results=self.results, out=self.out,
            split=self.split, year=self.year, preset=self.preset, overrides=self.overrides, size=self.size,
            arch=self.arch, device=self.device, dtype=self.dtype, batch_size=self.batch_size,
            sequences=list(self.sequences) if self.sequences is not None else None, max_frames=self.max_frames,
            overwrite=self.overwrite, progress=self.progress, choice=self.weights,
        )  # fmt: skip


__all__ = ["EvalJob"]
