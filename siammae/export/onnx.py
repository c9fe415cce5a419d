"""ONNX export of the frame encoder: one graph from RGB frames to the features label propagation consumes.

The exported function is :class:`EncoderGraph`: frames (B, 3, H, W) float32 RGB in [0, 1] -> (B, h*w, D) float32
patch features after the final LayerNorm, as ``model.features`` gives them (the propagation engine L2-normalises
them, in one place for every encoder). Everything a runtime needs is inside the graph or its metadata:

- input normalisation (mean / std) is the graph's first op;
- the [CLS] and position embeddings for the target grid are computed here, at export time, and stored as
  constants (a learned table is resized bicubically without antialias as DINO does; TensorRT has no antialiased
  resize, and a fixed grid needs none at run time);
- the batch is dynamic (1 .. ``max_batch``); H and W are fixed;
- the model config, input size, patch size, mean / std, dtype, max batch and provenance go in ``metadata_props``
  (read back with :func:`read_info`).

fp16 graphs keep float32 input and output: the frames are normalised in fp32 and cast inside the graph; weights and
matrix products are fp16; LayerNorm runs in fp32, as under ``torch.autocast`` (a
variance computed in fp16 can overflow on the high-norm tokens of trained ViTs, Darcet et al. 2024, "Vision
Transformers Need Registers"). TensorRT 11 builds only strongly typed networks, so this graph is also how a
TensorRT fp16 engine gets its precision.

The exporter is ``torch.onnx.export(..., dynamo=True)``; if it fails, the TorchScript exporter is used instead,
with a log line saying so, and the metadata records which one produced the file.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from siammae.data.transforms import DINO_STD, IMAGENET_MEAN, IMAGENET_STD
from siammae.errors import InputError, SiamMAEError
from siammae.export.attention import ATTENTIONS, TRANSLATIONS, use_fused_attention
from siammae.export.metadata import (
    _META_PREFIX,
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    STD_NAMES,
    ExportInfo,
)
from siammae.export.paths import check_outputs, default_output, size_text
from siammae.export.verify import verify_onnx
from siammae.io import TMP_PREFIX, atomic_write, umask, write_error
from siammae.memory import check_encoder_fits
from siammae.model.encoder import POS_INTERP, ViTEncoder
from siammae.model.load import load_weights
from siammae.propagation.config import get_preset

log = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16")
STDS = dict(zip(STD_NAMES, (IMAGENET_STD, DINO_STD), strict=True))
_PROTO_LIMIT = 1_800_000_000  # protobuf cannot serialise 2 GiB; above this the weights go to external data


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
    """The exported function: frames (B, 3, H, W) float32 RGB in [0, 1] -> (B, h*w, D) features.

    Equal to ``encoder.features(normalize(frames, mean, std), pos_interp)`` flattened over the grid (not
    L2-normalised: :class:`~siammae.propagation.engine.Propagator` does that for every encoder alike), with the
    [CLS] and position embeddings of the (h, w) grid precomputed as constant buffers.
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
        attention: str = "plain",
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if attention not in ("fused", "plain"):
            raise ValueError(f"attention must be 'fused' or 'plain', got {attention!r}")
        p = encoder.patch_size
        if height % p or width % p:
            raise InputError(
                f"input size {size_text(height, width)} (height x width) is not divisible by the patch size {p}"
            )
        h, w = height // p, width // p
        enc = copy.deepcopy(encoder).to("cpu", torch.float32).eval().requires_grad_(False)  # exported on the CPU
        pos = enc.pos_embed_for(h, w, pos_interp).detach().float()  # (1, 1 + h*w, D)
        self.register_buffer("cls_pos", enc.cls_token.detach() + pos[:, :1])  # (1, 1, D) [CLS] + its position
        self.register_buffer("patch_pos", pos[:, 1:].clone())  # (1, h*w, D)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        del enc.cls_token, enc.pos_embed  # folded into the constants above
        if attention == "fused":
            use_fused_attention(enc)  # one com.microsoft.MultiHeadAttention per block (siammae.export.attention)
        self.encoder = enc  # patch_embed, and forward_tokens (blocks + final LayerNorm) as the model runs them
        self.attention = attention
        self.height, self.width, self.grid = height, width, (h, w)
        self.patch_size, self.embed_dim = p, enc.embed_dim
        if dtype == "fp16":
            _to_half(self)
            self.cls_pos, self.patch_pos = self.cls_pos.half(), self.patch_pos.half()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = ((frames - self.mean) / self.std).to(self.cls_pos.dtype)  # (B, 3, H, W), normalised in fp32
        tokens = self.encoder.patch_embed(x) + self.patch_pos  # (B, h*w, D)
        tokens = torch.cat([self.cls_pos.expand(x.shape[0], -1, -1), tokens], dim=1)  # (B, 1 + h*w, D)
        return self.encoder.forward_tokens(tokens)[:, 1:].float()  # (B, h*w, D), [CLS] dropped


# ------------------------------------------------------------------------------------------------- export
def resolve_size(
    patch_size: int,
    size: int | tuple[int, int] | None = None,
    height: int | None = None,
    width: int | None = None,
    preset: str | None = None,
):
    """The (H, W) to export for: ``height`` and ``width`` as given; else the size at which ``siammae-track --preset
    preset [--size size]`` encodes a DAVIS 480p (854x480) landscape video (the preset's input rule,
    :func:`~siammae.propagation.config.get_preset`; None: the default preset), so that the graph fits the tracker
    as it is called: siammae-davis 480x880, dino 480x832, ``size`` 480 -> 480x848."""
    if (height is None) != (width is None):
        raise InputError("give both --height and --width, or --size")
    if height is not None and size is not None:
        raise InputError(f"give either --size ({size}) or --height/--width ({height}/{width}), not both")
    if height is None:
        return get_preset(preset, size=size).inputs.frame_size(480, 854, patch_size)
    bad = [f"{n} {v}" for n, v in (("height", height), ("width", width)) if v <= 0 or v % patch_size]
    if bad:
        fix_h, fix_w = (max(patch_size, v // patch_size * patch_size) for v in (height, width))
        raise InputError(
            f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a positive multiple of the patch size "
            f"{patch_size}: use e.g. --height {fix_h} --width {fix_w}"
        )
    return height, width


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
        custom_translation_table=TRANSLATIONS if graph.attention == "fused" else None,
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
    """(ModelProto, exporter name): the dynamo exporter, or the TorchScript one when dynamo fails (plain attention
    only: the TorchScript exporter has no translation of the fused op)."""
    example = torch.rand(min(2, max_batch), 3, graph.height, graph.width)
    if graph.attention == "fused":
        return _export_dynamo(graph, example, max_batch, opset), "dynamo"
    try:
        return _export_dynamo(graph, example, max_batch, opset), "dynamo"
    except torch.onnx.errors.OnnxExporterError as e:
        log.warning(f"dynamo ONNX exporter failed ({_first_line(e)}); falling back to the TorchScript exporter")
    return _export_torchscript(graph, example, opset), "torchscript"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _export_graph(encoder: ViTEncoder, H: int, W: int, mean, std, pos_interp, dtype, attention, max_batch, opset):
    """(ModelProto, exporter, attention written). ``attention`` "auto" tries the fused op and falls back to the
    plain graph, with a log line, when the exporter cannot write it; "fused" raises instead."""
    if attention in ("auto", "fused"):
        graph = EncoderGraph(encoder, H, W, mean, std, pos_interp, dtype, attention="fused").eval()
        try:
            return (*_to_onnx(graph, max_batch, opset), "fused")
        except torch.onnx.errors.OnnxExporterError as e:
            if attention == "fused":
                raise SiamMAEError(f"cannot export fused attention ({_first_line(e)}); use attention 'plain'") from e
            log.warning(f"fused attention export failed ({_first_line(e)}); exporting plain attention")
    graph = EncoderGraph(encoder, H, W, mean, std, pos_interp, dtype, attention="plain").eval()
    return (*_to_onnx(graph, max_batch, opset), "plain")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f"{TMP_PREFIX}{path.stem}.") as tmp_dir:
            onnx.save_model(
                proto,
                str(Path(tmp_dir) / path.name),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,  # tensors under 1 KB (shapes, which shape inference reads) stay inline
            )
            mode = 0o666 & ~umask()
            for name in (data_name, path.name):  # the weights first, then the graph
                os.chmod(Path(tmp_dir) / name, mode)
                os.replace(Path(tmp_dir) / name, path.parent / name)
    except OSError as e:
        raise write_error(path, e) from e


def max_opset() -> int:
    """The newest opset both PyTorch's exporter and the installed onnx package support."""
    import onnx
    import torch.onnx._constants as constants  # the exporter's own bound; no public name for it

    return min(onnx.defs.onnx_opset_version(), getattr(constants, "ONNX_MAX_OPSET", DEFAULT_OPSET))


def _check_options(out, overwrite: bool, max_batch: int, opset: int, attention: str, pos_interp: str) -> None:
    """:func:`export_onnx`'s options, checked before the checkpoint loads: an InputError / OutputError naming the
    bad one."""
    if out is not None:
        check_outputs(out, overwrite=overwrite)  # before the checkpoint loads
    if max_batch < 1:
        raise InputError(f"max batch must be at least 1, got {max_batch}")
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: LayerNormalization needs opset {MIN_OPSET} or newer")
    if opset > max_opset():
        raise InputError(f"opset {opset} is newer than this PyTorch and onnx can export (at most {max_opset()})")
    if attention not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if pos_interp not in POS_INTERP:
        raise InputError(f"pos_interp must be one of {POS_INTERP}, got {pos_interp!r}")


def _load_model(ckpt, out, arch: str | None, weights) -> tuple[nn.Module, object, str | None, str | None]:
    """:func:`export_onnx`'s model: ``ckpt`` itself when a module, else loaded by the one loader. Returns (model,
    what the default output is named after, the checkpoint's name for the metadata, its sha256); the last two are
    None for a module."""
    if isinstance(ckpt, nn.Module):
        if out is None:
            raise InputError("export_onnx needs an output path when given a model instead of a checkpoint")
        return ckpt, ckpt, None, None
    # the one loader: ckpt None is the default weights (or the shipped model when they cannot be had)
    model = load_weights(ckpt, arch=arch, choice=weights)
    provenance = model.provenance.to_dict()  # load_model hashed the file
    # the file's name, or the weights name (dino-vits8) when asked for by name
    by_path = ckpt is not None and Path(ckpt).exists()
    checkpoint = Path(provenance["path"]).name if by_path else provenance["weights"]
    ckpt = ckpt if by_path else provenance["weights"]  # default output: beside a file, or <name>_HxW.onnx here
    return model, ckpt, checkpoint, provenance["sha256"]


def export_onnx(
    ckpt=None,
    out: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    max_batch: int = 8,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    mean=None,
    std=None,
    preset: str | None = None,
    pos_interp: str = "auto",
    verify: bool = True,
    external_data: bool | None = None,
    attention: str = "auto",
    overwrite: bool = False,
    weights=None,
) -> Path:
    """Export the encoder of ``ckpt`` (a checkpoint path or weights name, loaded by the one loader
    :func:`siammae.model.load.load_weights`: None is the default weights, or the shipped model when they cannot be
    had, ``weights`` that :class:`~siammae.model.load.WeightsChoice` when already made; or a SiamMAE / ViTEncoder)
    to ONNX; return the path.

    Size: ``height`` x ``width``, or ``size`` and ``preset`` (see :func:`resolve_size`); ``mean`` and ``std``
    default to the preset's input rule (DINO's std 0.228 for ``dino``, ImageNet's otherwise). ``out`` defaults to
    ``<ckpt>_<H>x<W>[_fp16].onnx`` beside the checkpoint (sizes are height x width everywhere); an existing file
    is an :class:`~siammae.errors.OutputError` unless ``overwrite``. The file is checked with ``onnx.checker`` and, with
    ``verify``, run by onnxruntime against PyTorch (:func:`verify_onnx`): figures in ``<out>.verify.json``, an
    :class:`ExportVerificationError` when outside :data:`TOLERANCE`.

    ``attention``: "fused" writes each block's attention as onnxruntime's ``com.microsoft.MultiHeadAttention``
    (flash attention: memory linear in the tokens, see :mod:`siammae.export.attention`); "plain" as MatMul +
    Softmax + MatMul, which any runtime reads and TensorRT fuses itself (build engines from it); "auto" is
    "fused", or "plain" when the exporter cannot write the fused op.
    """
    import onnx

    _check_options(out, overwrite, max_batch, opset, attention, pos_interp)
    model, ckpt, checkpoint, sha = _load_model(ckpt, out, arch, weights)
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"export_onnx takes a SiamMAE or ViTEncoder, got {type(model).__name__}")
    dtype = "fp16" if fp16 else "fp32"
    H, W = resolve_size(encoder.patch_size, size, height, width, preset)
    rule = get_preset(preset).inputs
    mean, std = rule.mean if mean is None else mean, rule.std if std is None else std
    out = check_outputs(out if out is not None else default_output(ckpt, (H, W), dtype), overwrite=overwrite)
    # tracing runs a batch of 2 frames; verification runs up to max_batch through PyTorch and onnxruntime
    check_encoder_fits(encoder, H, W, max(2, max_batch if verify else 2), "cpu", f"export at {size_text(H, W)}")

    import siammae

    log.info(
        f"exporting {dtype} encoder ({_describe(encoder)}) for {size_text(H, W)} frames (height x width), "
        f"batch 1..{max_batch}, opset {opset}"
    )
    proto, exporter, attention = _export_graph(encoder, H, W, mean, std, pos_interp, dtype, attention, max_batch, opset)
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
        attention=attention,
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
    log.info(f"wrote {out} ({_file_mb(out):.1f} MB, {exporter} exporter, {attention} attention)")
    if verify:
        verify_onnx(out, model, info)
    return out


def _describe(encoder: ViTEncoder) -> str:
    c = encoder.config
    return f"ViT patch {c.patch_size}, width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads"


def _file_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6
