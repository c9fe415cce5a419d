"""What ``siammae-export`` runs, as one library call: an :class:`ExportJob` checked up front, then
:func:`~siammae.export.onnx.export_onnx` (the weights through the one loader, :mod:`siammae.model.load`) and, with
``trt``, :func:`~siammae.export.tensorrt.build_engine`.

:meth:`ExportJob.check` refuses, without torch or a model: an output that exists (or its engine, with ``trt``),
``--height`` without ``--width`` or with ``--size``, an absurd ``--size``, ``--trt`` on a machine with no GPU (before
"install tensorrt": installing it would not help), a missing checkpoint or an unknown weights name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from siammae.errors import InputError


@dataclass(frozen=True)
class ExportJob:
    """One ``siammae-export`` command line, as data (see ``siammae-export --help`` for each field; ``std``: a name
    of :data:`~siammae.export.metadata.STD_NAMES` or None for the preset's)."""

    ckpt: str | None = None
    arch: str | None = None
    out: Path | None = None
    preset: str | None = None
    size: int | tuple[int, int] | None = None
    height: int | None = None
    width: int | None = None
    max_batch: int = 8
    fp16: bool = False
    opset: int | None = None
    std: str | None = None
    pos_interp: str = "auto"
    trt: bool = False
    workspace: float = 4.0
    overwrite: bool = False
    verify: bool = True

    def check(self) -> ExportJob:
        """Everything checkable without torch or a model (module docstring); InputError naming the problem."""
        from siammae.export.paths import check_outputs
        from siammae.model.load import check_input_size, gpu_absent

        if (self.height is None) != (self.width is None):
            raise InputError("give both --height and --width, or --size")
        if self.height is not None and self.size is not None:
            given = "x".join(map(str, self.size)) if isinstance(self.size, tuple) else self.size
            raise InputError(f"give either --size ({given}) or --height/--width ({self.height}/{self.width}), not both")
        if self.height is None:
            check_input_size(self.size)
        else:
            check_input_size((self.height, self.width), "--height/--width")
        if self.max_batch < 1:
            raise InputError(f"--max-batch {self.max_batch}: must be at least 1")
        if self.trt:
            why = gpu_absent()
            if why is not None:
                raise InputError(
                    f"--trt builds a TensorRT engine, which needs an NVIDIA GPU, and {why}: export the ONNX graph "
                    "alone (no --trt) and run it with onnxruntime, or build the engine on the GPU machine"
                )
        if self.out is not None:
            check_outputs(self.out, self.trt, self.overwrite)
        self.weights  # noqa: B018  (the weights last: a missing file or an unknown name, torch-free)
        return self

    @cached_property
    def weights(self):
        """The :class:`~siammae.model.load.WeightsChoice` (``ckpt``, or the default weights, or the shipped model
        when they cannot be had), made once without torch."""
        from siammae.model.load import choose_weights

        return choose_weights(self.ckpt)

    def run(self) -> list[Path]:
        """Check, export (and build the engine): the files written, the graph first."""
        self.check()
        from siammae.export.metadata import DEFAULT_OPSET
        from siammae.export.onnx import STDS, export_onnx
        from siammae.export.tensorrt import build_engine, require_tensorrt

        if self.trt:
            require_tensorrt()  # torch's word on the GPU, and tensorrt installed: before the export, not after it
        path = export_onnx(
            self.ckpt, self.out, arch=self.arch, size=self.size, preset=self.preset, height=self.height,
            width=self.width, max_batch=self.max_batch, fp16=self.fp16,
            opset=DEFAULT_OPSET if self.opset is None else self.opset,
            std=None if self.std is None else STDS[self.std], pos_interp=self.pos_interp, verify=self.verify,
            attention="plain" if self.trt else "auto",  # TensorRT reads no com.microsoft ops; it fuses the plain graph
            overwrite=self.overwrite, weights=self.weights,
        )  # fmt: skip
        if not self.trt:
            return [path]
        return [path, build_engine(path, workspace=self.workspace, verify=self.verify)]


__all__ = ["ExportJob"]
