"""ONNX export of the frame encoder: one graph from RGB frames to the features label propagation consumes.

The exported function is :class:`EncoderGraph`: frames (B, 3, H, W) float32 RGB in [0, 1] -> (B, h*w, D) float32
patch features, L2-normalised over channels. Everything a runtime needs is inside the graph or its metadata:

- input normalisation (mean / std) is the graph's first op;
- the [CLS] and position embeddings for the target grid are computed here, at export time, and stored as
  constants (a learned table is resized bicubically without antialias as DINO does; TensorRT has no antialiased
  resize, and a fixed grid needs none at run time);
- the batch is dynamic (1 .. ``max_batch``); H and W are fixed;
- the model config, input size, patch size, mean / std, dtype, max batch and provenance go in ``metadata_props``
  (read back with :func:`read_info`).

fp16 graphs keep float32 input and output: the frames are normalised in fp32 and cast inside the graph; weights and
matrix products are fp16; LayerNorm and the final L2 normalisation run in fp32, as under ``torch.autocast`` (a
variance computed in fp16 can overflow on the high-norm tokens of trained ViTs, Darcet et al. 2024, "Vision
Transformers Need Registers"). TensorRT 11 builds only strongly typed networks, so this graph is also how a
TensorRT fp16 engine gets its precision.

The exporter is ``torch.onnx.export(..., dynamo=True)``; if it fails, the TorchScript exporter is used instead,
with a log line saying so, and the metadata records which one produced the file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from siammae.checkpoint import file_sha256, load_model
from siammae.data.transforms import DINO_STD, IMAGENET_MEAN, IMAGENET_STD, normalize, target_size
from siammae.encoder import POS_INTERP, ViTEncoder
from siammae.errors import InputError, SiamMAEError
from siammae.io import atomic_write, write_json

log = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16")
DEFAULT_OPSET = 18  # LayerNormalization needs 17; 18 is read by onnxruntime and TensorRT 10 alike
MIN_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "frames", "features"
STDS = {"imagenet": IMAGENET_STD, "dino": DINO_STD}
# the fp32 graph must match PyTorch to 1e-4 (max abs, on unit vectors); fp16 to a per-token cosine of 0.999
TOLERANCE = {"fp32": {"max_abs_err": 1e-4}, "fp16": {"min_cosine": 0.999}}
_PROTO_LIMIT = 1_800_000_000  # protobuf cannot serialise 2 GiB; above this the weights go to external data
_META_PREFIX = "siammae."
_STR_FIELDS = {"dtype", "pos_interp", "exporter", "siammae_version", "torch_version", "checkpoint", "checkpoint_sha256"}


class ExportVerificationError(SiamMAEError):
    """The exported graph does not reproduce the PyTorch model within the tolerance."""


# ------------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ExportInfo:
    """What a runtime needs to know about an exported encoder; stored in the ONNX ``metadata_props``."""

    config: dict  # ModelConfig.to_dict() of the encoder
    height: int  # input size the graph was built for
    width: int
    patch_size: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_batch: int
    dtype: str  # "fp32" | "fp16" (weights and matrix products; input and output are always float32)
    pos_interp: str
    exporter: str  # "dynamo" | "torchscript"
    opset: int
    siammae_version: str
    torch_version: str
    checkpoint: str | None = None  # file name of the weights, with their SHA-256
    checkpoint_sha256: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w)."""
        return self.height // self.patch_size, self.width // self.patch_size

    def to_props(self) -> dict[str, str]:
        """Flat string key / values for ONNX ``metadata_props`` (JSON for non-strings), plus I/O descriptions."""
        props = {
            _META_PREFIX + k: v if k in _STR_FIELDS else json.dumps(v) for k, v in asdict(self).items() if v is not None
        }
        h, w = self.grid
        props[_META_PREFIX + "input"] = f"{INPUT_NAME}: (B, 3, {self.height}, {self.width}) float32 RGB in [0, 1]"
        props[_META_PREFIX + "output"] = f"{OUTPUT_NAME}: (B, {h}*{w}, {self.embed_dim}) float32, L2-normalised"
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], path: str | os.PathLike) -> ExportInfo:
        """Rebuild from ``metadata_props``; a graph not written by siammae is an InputError naming the file."""
        stored = {k[len(_META_PREFIX) :]: v for k, v in props.items() if k.startswith(_META_PREFIX)}
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(stored) - {"checkpoint", "checkpoint_sha256"})
        if missing:
            raise InputError(f"{path}: not an encoder exported by siammae-export (metadata lacks {', '.join(missing)})")
        try:
            kw = {k: v if k in _STR_FIELDS else json.loads(v) for k, v in stored.items() if k in names}
            kw["mean"], kw["std"] = tuple(kw["mean"]), tuple(kw["std"])
            return cls(**kw)
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: corrupt siammae metadata ({e})") from e


def read_info(path: str | os.PathLike) -> ExportInfo:
    """The :class:`ExportInfo` of an exported ``.onnx`` file (reads the graph, not external weights)."""
    import onnx
    from google.protobuf.message import DecodeError  # onnx's own dependency

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable ONNX file ({e})") from e
    return ExportInfo.from_props({p.key: p.value for p in model.metadata_props}, path)


# ---------------------------------------------------------------------------------------------- the graph
class _FloatLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 on an fp16 stream (fp32 weights), as ``torch.autocast`` runs it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(x.dtype)


def _to_half(module: nn.Module) -> None:
    """Cast linear and conv weights to fp16 in place; replace every LayerNorm by an fp32 :class:`_FloatLayerNorm`.

    Any other layer with its own parameters is an error: its precision would be a guess.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm):
            ln = _FloatLayerNorm(child.normalized_shape, eps=child.eps, elementwise_affine=child.weight is not None)
            ln.load_state_dict(child.state_dict())
            setattr(module, name, ln.float())
        elif isinstance(child, (nn.Linear, nn.Conv2d)):
            child.half()
        elif any(True for _ in child.parameters(recurse=False)):
            raise TypeError(f"fp16 export: no precision rule for layer {name} ({type(child).__name__})")
        else:
            _to_half(child)


class EncoderGraph(nn.Module):
    """The exported function: frames (B, 3, H, W) float32 RGB in [0, 1] -> (B, h*w, D) L2-normalised features.

    Equal to ``F.normalize(encoder.features(normalize(frames, mean, std), pos_interp), dim=-1)`` flattened over
    the grid, with the [CLS] and position embeddings of the (h, w) grid precomputed as constant buffers.
    The encoder is copied: the caller's model is not changed.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        height: int,
        width: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pos_interp: str = "auto",
        dtype: str = "fp32",
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        p = encoder.patch_size
        if height % p or width % p:
            raise InputError(f"input size {width}x{height} is not divisible by the patch size {p}")
        h, w = height // p, width // p
        enc = copy.deepcopy(encoder).to("cpu", torch.float32).eval().requires_grad_(False)  # exported on the CPU
        pos = enc.pos_embed_for(h, w, pos_interp).detach().float()  # (1, 1 + h*w, D)
        self.register_buffer("cls_pos", enc.cls_token.detach() + pos[:, :1])  # (1, 1, D) [CLS] + its position
        self.register_buffer("patch_pos", pos[:, 1:].clone())  # (1, h*w, D)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        del enc.cls_token, enc.pos_embed  # folded into the constants above
        self.encoder = enc  # patch_embed, and forward_tokens (blocks + final LayerNorm) as the model runs them
        self.height, self.width, self.grid = height, width, (h, w)
        self.patch_size, self.embed_dim = p, enc.embed_dim
        if dtype == "fp16":
            _to_half(self)
            self.cls_pos, self.patch_pos = self.cls_pos.half(), self.patch_pos.half()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = ((frames - self.mean) / self.std).to(self.cls_pos.dtype)  # (B, 3, H, W), normalised in fp32
        tokens = self.encoder.patch_embed(x) + self.patch_pos  # (B, h*w, D)
        tokens = torch.cat([self.cls_pos.expand(x.shape[0], -1, -1), tokens], dim=1)  # (B, 1 + h*w, D)
        feats = self.encoder.forward_tokens(tokens)[:, 1:].float()  # (B, h*w, D), [CLS] dropped
        return F.normalize(feats, dim=-1)


def reference_features(model, frames: torch.Tensor, mean, std, pos_interp: str = "auto") -> torch.Tensor:
    """The PyTorch features an exported graph must reproduce: (B, 3, H, W) in [0, 1] -> (B, h*w, D), fp32."""
    x = normalize(frames.to(next(model.parameters()).device, torch.float32), mean, std)
    with torch.inference_mode():
        feats = model.features(x, pos_interp=pos_interp).float().cpu()  # (B, h, w, D)
    return F.normalize(feats.flatten(1, 2), dim=-1)  # (B, h*w, D)


# ------------------------------------------------------------------------------------------------- export
def resolve_size(patch_size: int, size: int | None = None, height: int | None = None, width: int | None = None):
    """The (H, W) to export for: ``height`` and ``width`` as given, or from ``size``, the short side of a DAVIS 480p
    (854x480) landscape video as the tracker resizes it (long side floored to the patch size: 480 -> 480x848).
    Neither: ``size`` 480."""
    if (height is None) != (width is None):
        raise InputError("give both --height and --width, or --size")
    if height is not None and size is not None:
        raise InputError(f"give either --size ({size}) or --height/--width ({height}/{width}), not both")
    if height is None:
        short = 480 if size is None else size
        if short < patch_size:
            raise InputError(f"size {short} is smaller than the patch size {patch_size}")
        return target_size(480, 854, short, patch_size)
    bad = [f"{n} {v}" for n, v in (("height", height), ("width", width)) if v <= 0 or v % patch_size]
    if bad:
        fix_h, fix_w = (max(patch_size, v // patch_size * patch_size) for v in (height, width))
        raise InputError(
            f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a positive multiple of the patch size "
            f"{patch_size}: use e.g. --height {fix_h} --width {fix_w}"
        )
    return height, width


def default_output(ckpt: str | os.PathLike, size: tuple[int, int], dtype: str) -> Path:
    """``<ckpt stem>_<H>x<W>[_fp16].onnx`` next to the checkpoint."""
    ckpt = Path(ckpt)
    suffix = "_fp16" if dtype == "fp16" else ""
    return ckpt.with_name(f"{ckpt.stem}_{size[0]}x{size[1]}{suffix}.onnx")


def _export_dynamo(graph: EncoderGraph, example: torch.Tensor, max_batch: int, opset: int):
    """torch.export-based exporter; the batch dimension is symbolic ("batch", 1 .. max_batch)."""
    dynamic = None
    if max_batch > 1:
        dynamic = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        dynamic_shapes=dynamic,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        verbose=False,
    )
    return program.model_proto


def _export_torchscript(graph: EncoderGraph, example: torch.Tensor, opset: int):
    """The legacy TorchScript exporter (fallback). Its deprecation warning is replaced by our log line, and its
    tracer warnings (Python numbers taken from shapes) are moot for fixed H, W: the result is verified anyway."""
    import io

    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )
    return onnx.load_from_string(buf.getvalue())


def _to_onnx(graph: EncoderGraph, max_batch: int, opset: int):
    """(ModelProto, exporter name): the dynamo exporter, or the TorchScript one when dynamo fails."""
    example = torch.rand(min(2, max_batch), 3, graph.height, graph.width)
    try:
        return _export_dynamo(graph, example, max_batch, opset), "dynamo"
    except torch.onnx.errors.OnnxExporterError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning(
            f"dynamo ONNX exporter failed ({type(e).__name__}: {first}); falling back to the TorchScript exporter"
        )
    return _export_torchscript(graph, example, opset), "torchscript"


def _save(proto, path: Path, external_data: bool | None) -> None:
    """Write ``proto`` to ``path`` atomically; weights in ``<path>.data`` beside it when ``external_data`` (None:
    only when the model is too large for one protobuf)."""
    import onnx

    if external_data is None:
        external_data = proto.ByteSize() > _PROTO_LIMIT
    if not external_data:
        with atomic_write(path) as tmp:
            onnx.save_model(proto, str(tmp))
        return
    data_name = path.name + ".data"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp_dir:
        onnx.save_model(
            proto,
            str(Path(tmp_dir) / path.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,  # tensors under 1 KB (shapes, which shape inference reads) stay inline
        )
        os.replace(Path(tmp_dir) / data_name, path.parent / data_name)  # the weights first, then the graph
        os.replace(Path(tmp_dir) / path.name, path)


def export_onnx(
    ckpt,
    out: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    max_batch: int = 8,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    pos_interp: str = "auto",
    verify: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Export the encoder of ``ckpt`` (a checkpoint path, or a SiamMAE / ViTEncoder) to ONNX; return the path.

    Size: ``height`` x ``width``, or ``size`` (see :func:`resolve_size`). ``out`` defaults to
    ``<ckpt>_<H>x<W>[_fp16].onnx`` beside the checkpoint. The file is checked with ``onnx.checker`` and, with
    ``verify``, run by onnxruntime against PyTorch (:func:`verify_onnx`): figures in ``<out>.verify.json``, an
    :class:`ExportVerificationError` when outside :data:`TOLERANCE`.
    """
    import onnx

    if max_batch < 1:
        raise InputError(f"max batch must be at least 1, got {max_batch}")
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if pos_interp not in POS_INTERP:
        raise InputError(f"pos_interp must be one of {POS_INTERP}, got {pos_interp!r}")
    checkpoint = sha = None
    if isinstance(ckpt, nn.Module):
        model = ckpt
        if out is None:
            raise InputError("export_onnx needs an output path when given a model instead of a checkpoint")
    else:
        checkpoint, model = Path(ckpt).name, load_model(ckpt, arch=arch)
        sha = file_sha256(ckpt)
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"export_onnx takes a SiamMAE or ViTEncoder, got {type(model).__name__}")
    dtype = "fp16" if fp16 else "fp32"
    H, W = resolve_size(encoder.patch_size, size, height, width)
    out = Path(out) if out is not None else default_output(ckpt, (H, W), dtype)

    import siammae

    graph = EncoderGraph(encoder, H, W, mean, std, pos_interp, dtype).eval()
    log.info(
        f"exporting {dtype} encoder ({_describe(encoder)}) for {W}x{H} frames, batch 1..{max_batch}, opset {opset}"
    )
    proto, exporter = _to_onnx(graph, max_batch, opset)
    info = ExportInfo(
        config=encoder.config.to_dict(),
        height=H,
        width=W,
        patch_size=encoder.patch_size,
        embed_dim=encoder.embed_dim,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        max_batch=max_batch,
        dtype=dtype,
        pos_interp=pos_interp,
        exporter=exporter,
        opset=opset,
        siammae_version=siammae.__version__,
        torch_version=torch.__version__,
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
    )
    proto.producer_name, proto.producer_version = "siammae", siammae.__version__
    proto.doc_string = f"siammae encoder: {info.to_props()[_META_PREFIX + 'input']} -> features"
    onnx.helper.set_model_props(proto, info.to_props())
    _save(proto, out, external_data)
    onnx.checker.check_model(str(out))
    log.info(f"wrote {out} ({_file_mb(out):.1f} MB, {exporter} exporter)")
    if verify:
        verify_onnx(out, model, info)
    return out


def _describe(encoder: ViTEncoder) -> str:
    c = encoder.config
    return f"ViT patch {c.patch_size}, width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads"


def _file_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6


# ------------------------------------------------------------------------------------------------- verify
def compare(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Error figures of features ``out`` against ``ref``, both (B, N, D): max abs error, per-token cosine."""
    out, ref = out.float().cpu(), ref.float().cpu()
    cos = F.cosine_similarity(out, ref, dim=-1)  # (B, N)
    return {
        "max_abs_err": float((out - ref).abs().max()),
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
    }


def format_figures(f: dict) -> str:
    return f"max abs error {f['max_abs_err']:.2e}, min cosine {f['min_cosine']:.6f}, mean cosine {f['mean_cosine']:.6f}"


def within(figures: dict, tol: dict) -> bool:
    """Whether ``figures`` (from :func:`compare`) meet a tolerance such as ``TOLERANCE["fp32"]``."""
    ok = figures["max_abs_err"] <= tol.get("max_abs_err", math.inf)
    return ok and figures["min_cosine"] >= tol.get("min_cosine", -math.inf)


def verify_onnx(
    path: str | os.PathLike,
    model,
    info: ExportInfo | None = None,
    batch_sizes: tuple[int, ...] = (1, 2),
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """Run the exported graph with onnxruntime (CUDA provider where present, else CPU) and ``model`` in fp32
    PyTorch on the same random frames; write the figures to ``<path>.verify.json`` and return them.

    Raises :class:`ExportVerificationError` when the graph is outside :data:`TOLERANCE` for its dtype.
    """
    from siammae.export.runtime import OnnxEncoder

    path = Path(path)
    info = info or read_info(path)
    runtime = OnnxEncoder(path, device=device)
    g = torch.Generator().manual_seed(seed)
    batch_sizes = tuple(sorted({min(b, info.max_batch) for b in batch_sizes}))
    outs, refs = [], []
    for b in batch_sizes:
        frames = torch.rand(b, 3, info.height, info.width, generator=g)
        outs.append(runtime(frames).flatten(1, 2).cpu())  # (b, h*w, D)
        refs.append(reference_features(model, frames, info.mean, info.std, info.pos_interp))
    figures = compare(torch.cat(outs), torch.cat(refs))
    import onnxruntime

    report = {
        "model": path.name,
        "dtype": info.dtype,
        **figures,
        "tolerance": TOLERANCE[info.dtype],
        "passed": within(figures, TOLERANCE[info.dtype]),
        "reference": "PyTorch fp32",
        "providers": runtime.providers,
        "batch_sizes": list(batch_sizes),
        "input_shape": ["B", 3, info.height, info.width],
        "output_shape": ["B", info.grid[0] * info.grid[1], info.embed_dim],
        "exporter": info.exporter,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    report_path = path.with_name(path.name + ".verify.json")
    write_json(report_path, report)
    log.info(
        f"verify ({', '.join(runtime.providers)}, batches {list(batch_sizes)}): {format_figures(figures)} -> "
        + ("ok" if report["passed"] else "FAILED")
    )
    if not report["passed"]:
        raise ExportVerificationError(
            f"{path}: onnxruntime output differs from PyTorch beyond {TOLERANCE[info.dtype]} "
            f"(max abs error {figures['max_abs_err']:.2e}, min cosine {figures['min_cosine']:.6f}); "
            f"details in {report_path.name}"
        )
    return report
