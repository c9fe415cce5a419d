"""Exported encoders as :class:`~siammae.propagation.features.FrameEncoder`: an ONNX graph or a TensorRT engine in place
of the PyTorch model, so that the tracker, evaluation and attention maps run on them unchanged.

Both take frames (B, 3, H, W) float RGB in [0, 1] (normalisation is inside the graph) and return (B, h, w, D)
float32 features (the propagation L2-normalises them). A graph is built for one frame size (``fixed_size``);
another size is an :class:`~siammae.errors.InputError` naming the file and both sizes. Batches larger than the
graph's ``max_batch`` are run in chunks.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from siammae.device import resolve_device
from siammae.errors import InputError, MissingExtraError, SiamMAEError
from siammae.export.metadata import read_info
from siammae.io import read_json

log = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")


def check_frames(frames: torch.Tensor, size: tuple[int, int], path: Path) -> None:
    """Frames must be (B, 3, H, W) at the size the graph was built for."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"{path.name}: expected frames of shape (B, 3, H, W), got {tuple(frames.shape)}")
    H, W = frames.shape[-2:]
    if tuple(size) != (H, W):
        raise InputError(
            f"{path.name} was built for {size[0]}x{size[1]} frames but got {H}x{W} (height x width); "
            f"export it for this size: siammae-export --height {H} --width {W}"
        )


def require_tensorrt(purpose: str = "building a TensorRT engine"):
    """The ``tensorrt`` module, after checking that it is installed and that there is a CUDA GPU."""
    if not torch.cuda.is_available():  # first: installing tensorrt would not help
        raise SiamMAEError(
            f"{purpose} needs a CUDA GPU, and torch sees none (torch {torch.__version__}, "
            f"CUDA {torch.version.cuda or 'not built in'}): TensorRT runs only on an NVIDIA GPU; on this machine "
            "use the ONNX graph (onnxruntime)"
        )
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingExtraError("tensorrt", "trt", purpose) from e
    return trt


def torch_dtype(trt, dtype) -> torch.dtype:
    """The torch dtype of a TensorRT I/O tensor type (the graphs have float32 I/O; fp16 for foreign engines)."""
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise InputError(f"engine I/O type {dtype} is not supported (expected float32 or float16)")
    return table[dtype]


# onnxruntime's switch for its non-Windows telemetry: unset, importing it writes a device id and a SQLite file to
# $HOME/.cache/Microsoft/DeveloperTools/.onnxruntime (seen with 1.31). It is read once, at import, so it is set here
# before the one import of onnxruntime in the package; ``ORT_DISABLE_TELEMETRY=0`` in the environment opts back in.
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def import_onnxruntime():
    """The ``onnxruntime`` module, imported with its telemetry off (:data:`ORT_TELEMETRY_ENV`; on Windows builds
    ``disable_telemetry_events()``), so that no run writes outside its outputs. Every use of onnxruntime in siammae
    imports it through here."""
    os.environ.setdefault(ORT_TELEMETRY_ENV, "1")
    import onnxruntime

    if os.environ[ORT_TELEMETRY_ENV] != "0":
        onnxruntime.disable_telemetry_events()
    return onnxruntime


class OnnxEncoder:
    """An exported ``.onnx`` encoder run by onnxruntime: CUDA provider on a CUDA device, CPU provider otherwise.

    ``device``: "auto" uses CUDA when torch sees a GPU and onnxruntime has a CUDA provider, else the CPU;
    "cuda" without either is an error. Features are returned on ``device``. ``threads``: intra-op threads of the
    CPU provider (default: onnxruntime's choice).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "auto", threads: int | None = None):
        ort = import_onnxruntime()
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        self.path = Path(path)
        self.info = read_info(self.path)  # first: a graph siammae did not write is named as such
        wanted = torch.device(device) if str(device) != "auto" else None
        self.device = resolve_device(device)
        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        if self.device.type == "cuda" and not has_cuda_ep:
            if wanted is not None:
                raise SiamMAEError(
                    f"running {self.path.name} on CUDA needs onnxruntime-gpu; onnxruntime {ort.__version__} here has "
                    f"{', '.join(ort.get_available_providers())} (use device cpu)"
                )
            log.info(f"onnxruntime {ort.__version__} has no CUDA provider: running {self.path.name} on the CPU")
            self.device = torch.device("cpu")
        providers: list = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.NoSuchFile) as e:
            raise InputError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from e
        self.providers = self.session.get_providers()
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise SiamMAEError(f"onnxruntime could not start its CUDA provider for {self.path.name}")
        self.patch_size = self.info.patch_size
        self.embed_dim = self.info.embed_dim
        self.dtype = self.info.dtype  # "fp32" | "fp16": the graph's compute precision (its I/O is float32)
        self.fixed_size = self.info.size
        self.max_batch = self.info.max_batch
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.path.name}, {self.info.dtype}, {self.fixed_size}, {self.providers[0]})"

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> (B, h, w, D) float32 on ``device``."""
        check_frames(frames, self.fixed_size, self.path)
        h, w = self.info.grid
        run = self._run_cuda if self.device.type == "cuda" else self._run_cpu
        feats = torch.cat([run(chunk) for chunk in frames.split(self.max_batch)])  # (B, h*w, D)
        return feats.view(frames.shape[0], h, w, self.embed_dim)

    def _run_cpu(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self._output], {self._input: x})[0])

    def _run_cuda(self, frames: torch.Tensor) -> torch.Tensor:
        """Zero-copy: onnxruntime reads and writes torch's CUDA memory through an I/O binding."""
        x = frames.detach().to(self.device, torch.float32).contiguous()
        out = torch.empty(x.shape[0], math.prod(self.info.grid), self.embed_dim, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(self._input, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._output, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # x is written on torch's stream, read on ORT's
        self.session.run_with_iobinding(binding)
        return out


class TensorRTEncoder:
    """A serialised TensorRT engine (``siammae-export --trt``) on a CUDA device.

    Size, batch range, patch size and width come from the engine's own tensor shapes and optimisation profile;
    ``<engine>.json`` beside it (written by :func:`~siammae.export.tensorrt.build_engine`) adds the model config.
    Runs on torch's current CUDA stream, with torch tensors as the engine's I/O buffers.
    """

    info = None  # an engine holds no ExportInfo (its sidecar's record is ``build_info``)

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "auto"):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        trt = require_tensorrt(f"running the TensorRT engine {self.path.name}")
        self.device = resolve_device("cuda" if str(device) == "auto" else device)
        if self.device.type != "cuda":
            raise InputError(f"{self.path.name}: a TensorRT engine runs on a CUDA device, not {self.device}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise InputError(
                f"{self.path}: not a TensorRT engine for TensorRT {trt.__version__} on this GPU "
                "(engines are tied to the TensorRT version and GPU that built them: rebuild with siammae-export --trt)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise InputError(f"{self.path}: expected one input and one output tensor, found {inputs} and {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        _, C, H, W = tuple(self.engine.get_tensor_shape(self._input))  # (-1, 3, H, W)
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()
        self.context.set_input_shape(self._input, (1, C, H, W))
        _, N, D = tuple(self.context.get_tensor_shape(self._output))  # (1, h*w, D), resolved for batch 1
        p = math.isqrt(H * W // N) if N > 0 else 0
        if C != 3 or p == 0 or p * p * N != H * W:
            raise InputError(f"{self.path}: not a siammae encoder engine (input {C}x{H}x{W}, output {N}x{D})")
        self.fixed_size, self.patch_size, self.embed_dim = (H, W), p, D
        self.grid = (H // p, W // p)
        self.max_batch = tuple(self.engine.get_tensor_profile_shape(self._input, 0)[2])[0]
        self._in_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._input))
        self._out_dtype = torch_dtype(trt, self.engine.get_tensor_dtype(self._output))
        sidecar = self.path.with_name(self.path.name + ".json")
        self.build_info = read_json(sidecar) if sidecar.is_file() else None
        self.dtype = (self.build_info or {}).get("metadata", {}).get("siammae.dtype", "unknown")

    def __repr__(self) -> str:
        return f"TensorRTEncoder({self.path.name}, {self.fixed_size}, max batch {self.max_batch}, {self.device})"

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> (B, h, w, D) float32 on ``device``."""
        check_frames(frames, self.fixed_size, self.path)
        x = frames.detach().to(self.device, self._in_dtype).contiguous()
        stream = torch.cuda.current_stream(self.device).cuda_stream
        outs = []
        with torch.cuda.device(self.device):
            for chunk in x.split(self.max_batch):  # views of a contiguous tensor: contiguous
                out = torch.empty(chunk.shape[0], *self.grid, self.embed_dim, dtype=self._out_dtype, device=self.device)
                self.context.set_input_shape(self._input, tuple(chunk.shape))
                self.context.set_tensor_address(self._input, chunk.data_ptr())
                self.context.set_tensor_address(self._output, out.data_ptr())
                if not self.context.execute_async_v3(stream):
                    raise RuntimeError(f"TensorRT failed to run {self.path.name} on a batch of {chunk.shape[0]}")
                outs.append(out)
        return torch.cat(outs).float()  # (B, h, w, D)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "auto", **kwargs):
    """An exported encoder by file suffix: ``.onnx`` -> :class:`OnnxEncoder`, ``.engine`` / ``.plan`` ->
    :class:`TensorRTEncoder`. ``kwargs`` go to the class (``threads`` for ONNX)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxEncoder(path, device=device, **kwargs)
    if suffix in ENGINE_SUFFIXES:
        return TensorRTEncoder(path, device=device, **kwargs)
    raise InputError(
        f"{path}: unknown encoder file type {path.suffix or '(none)'}; "
        f"expected one of {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)}"
    )


def load_frame_encoder(ckpt=None, encoder=None, *, arch=None, device="auto", rank=None, progress=True, choice=None):
    """The :class:`~siammae.propagation.features.FrameEncoder` of a run, as every command loads it: the runtime of
    ``encoder`` (``.onnx`` / ``.engine``, :func:`load_encoder`) on ``device``, or the PyTorch weights of ``ckpt``
    through the one weights loader (:func:`siammae.model.load.load_weights`: None is the default weights, or the
    shipped model when they cannot be had; fetched once per machine under torchrun, ``rank``)."""
    if ckpt is not None and encoder is not None:
        raise InputError("give --ckpt (PyTorch weights) or --encoder (model.onnx / model.engine), not both")
    if encoder is not None:
        return load_encoder(encoder, device=device)
    from siammae.model.load import load_weights

    return load_weights(ckpt, arch=arch, rank=rank, progress=progress, choice=choice)
