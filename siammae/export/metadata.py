"""What an exported encoder carries about itself: :class:`ExportInfo` in the ONNX ``metadata_props``.

A leaf of the export package: the exporter writes it, the runtimes and the verifiers read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from siammae.errors import InputError
from siammae.io import parse_json

INPUT_NAME, OUTPUT_NAME = "frames", "features"
DEFAULT_OPSET = 18  # LayerNormalization needs 17; 18 is read by onnxruntime and TensorRT 10 alike
MIN_OPSET = 17
STD_NAMES = ("imagenet", "dino")  # normalisation std of the graph: ImageNet's, or DINO's evaluation code's
_META_PREFIX = "siammae."
_STR_FIELDS = {
    "attention",
    "dtype",
    "pos_interp",
    "exporter",
    "siammae_version",
    "torch_version",
    "checkpoint",
    "checkpoint_sha256",
}


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
    attention: str = "plain"  # "fused" (com.microsoft.MultiHeadAttention) | "plain" (MatMul, Softmax, MatMul)

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
        props[_META_PREFIX + "output"] = f"{OUTPUT_NAME}: (B, {h}*{w}, {self.embed_dim}) float32 features"
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], path: str | os.PathLike) -> ExportInfo:
        """Rebuild from ``metadata_props``; a graph not written by siammae is an InputError naming the file."""
        stored = {k[len(_META_PREFIX) :]: v for k, v in props.items() if k.startswith(_META_PREFIX)}
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(stored) - {"checkpoint", "checkpoint_sha256", "attention"})
        if missing:
            raise InputError(f"{path}: not an encoder exported by siammae-export (metadata lacks {', '.join(missing)})")
        try:
            kw = {
                k: v if k in _STR_FIELDS else parse_json(v, f"{path}: metadata {k}", object)
                for k, v in stored.items()
                if k in names
            }
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
