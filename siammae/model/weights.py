"""Pretrained weights by name: what ``--ckpt`` and :func:`siammae.load_model` accept besides a path.

    dino-vits16 ... dino-vitb8   the official DINO backbones (Caron et al. 2021), Apache-2.0
    mae-vitb16                   the official MAE ViT-B/16 (He et al. 2022), CC-BY-NC 4.0 (non-commercial)
    timm:<name>                  timm's pretrained weights (``timm:vit_small_patch8_224.dino``), timm's own cache
    hf:<owner>/<repo>/<file>     a ViT checkpoint on the Hugging Face hub, the Hugging Face cache
    a path                       as always; an existing path wins over a name

:func:`resolve_weights` turns any of them into a :class:`Weights`: the file (or, for timm, the state dict), its
sha256 and where it came from; the reports of tracking, evaluation and export carry that record. Official files are
cached and checked by :mod:`siammae.model.hub`. :data:`DEFAULT_WEIGHTS` is what the commands use when given no
``--ckpt`` (README, "Weights", says why).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.model.hub import cache_dir, cached_download, file_sha256, offline_variable, url_base

# DAVIS-2017 val J&F of frozen features with label propagation: DINO paper (Caron et al. 2021), Table 5 / App.
_DINO = "DINO (Caron et al. 2021)"
_APACHE = "Apache-2.0"
_MAE_NOTICE = (
    "note: mae-vitb16 weights are licensed CC-BY-NC 4.0 (non-commercial use only; "
    "https://github.com/facebookresearch/mae/blob/main/LICENSE)"
)


@dataclass(frozen=True)
class NamedWeights:
    """An official weight file known by name."""

    name: str
    arch: str  # "ViT-S/16"
    url_path: str  # path under the URL base (https://dl.fbaipublicfiles.com)
    licence: str
    source: str
    davis_jf: float | None = None  # DAVIS-2017 val J&F-Mean reported by the source paper
    embed_dim: int = 384
    patch_size: int = 16
    notice: str | None = None  # printed (stderr) whenever the weights are used

    @property
    def filename(self) -> str:
        return self.url_path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return url_base() + self.url_path

    @property
    def approx_mb(self) -> float:
        """Download size from the architecture: 12-block ViT at 224 px, fp32 (the files hold nothing else)."""
        d, p, depth = self.embed_dim, self.patch_size, 12
        grid = (224 // p) ** 2
        params = depth * (12 * d * d + 13 * d) + 3 * p * p * d + d + (grid + 2) * d + 2 * d
        return params * 4 / 1e6


def _dino(name: str, arch: str, stem: str, jf: float, d: int, p: int) -> NamedWeights:
    return NamedWeights(name, arch, f"/dino/{stem}/{stem}.pth", _APACHE, _DINO, jf, d, p)


WEIGHTS: dict[str, NamedWeights] = {
    w.name: w
    for w in (
        _dino("dino-vits16", "ViT-S/16", "dino_deitsmall16_pretrain", 61.8, 384, 16),
        _dino("dino-vits8", "ViT-S/8", "dino_deitsmall8_pretrain", 69.9, 384, 8),
        _dino("dino-vitb16", "ViT-B/16", "dino_vitbase16_pretrain", 62.3, 768, 16),
        _dino("dino-vitb8", "ViT-B/8", "dino_vitbase8_pretrain", 71.4, 768, 8),
        NamedWeights(
            "mae-vitb16",
            "ViT-B/16",
            "/mae/pretrain/mae_pretrain_vit_base.pth",
            "CC-BY-NC-4.0",
            "MAE (He et al. 2022)",
            None,
            768,
            16,
            _MAE_NOTICE,
        ),
    )
}

# The model the commands use without --ckpt: DINO ViT-S/16. At 480p it needs 1/8.8 of ViT-S/8's FLOPs and ran 7-19x
# faster on a 2-core CPU (benchmarks/results/bench_default_weights-cpu.md, bench_encoder-cpu.md), so the card's
# command finishes on a laptop; ViT-S/8 is +8.1 J&F on DAVIS, one flag away (--ckpt dino-vits8). README "Weights".
DEFAULT_WEIGHTS = "dino-vits16"


@dataclass(frozen=True)
class Weights:
    """Resolved weights: a file (``path``), or for timm a state dict (``state``), with its identity."""

    spec: str  # what was asked for: a name or a path
    path: Path | None
    sha256: str
    name: str | None = None  # the name, when asked for by name
    licence: str | None = None
    url: str | None = None
    state: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The record that reports carry: ``{"weights", "path", "sha256", "licence", "url"}``."""
        return {
            "weights": self.name or str(self.path),
            "path": str(self.path) if self.path is not None else None,
            "sha256": self.sha256,
            "licence": self.licence,
            "url": self.url,
        }


def list_weights() -> list[str]:
    """The names :func:`resolve_weights` knows (besides ``timm:`` and ``hf:``)."""
    return list(WEIGHTS)


def is_name(spec: str) -> bool:
    """Whether ``spec`` reads as a weights name rather than a file path (no folder, no file suffix)."""
    return spec.startswith(("timm:", "hf:")) or ("/" not in spec and "\\" not in spec and not Path(spec).suffix)


def suggest(spec: str, names: list[str] | None = None) -> str:
    """'; did you mean a, b?' for the known names closest to ``spec`` (difflib), or ''."""
    close = difflib.get_close_matches(spec, names if names is not None else list_weights(), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown_name_error(spec: str) -> CheckpointError:
    known = ", ".join(list_weights())
    return CheckpointError(
        f"{spec!r} is neither a file nor a known weights name{suggest(spec)} (known: {known}, timm:<name>, "
        f"hf:<owner>/<repo>/<file>; siammae-weights list)"
    )


def weights_table() -> list[dict]:
    """One row per named weight: name, architecture, size (MB; the file's once cached), licence, DAVIS J&F, cached."""
    rows = []
    for w in WEIGHTS.values():
        path = cache_dir() / w.filename
        cached = path.is_file()
        rows.append(
            {
                "name": w.name,
                "arch": w.arch,
                "size_mb": round(path.stat().st_size / 1e6 if cached else w.approx_mb, 1),
                "licence": w.licence,
                "davis_jf": w.davis_jf,
                "cached": cached,
                "default": w.name == DEFAULT_WEIGHTS,
                "path": str(path),
                "url": w.url,
            }
        )
    return rows


def weights_path(spec: str, progress: bool = True) -> Path:
    """The local file of a named weight (downloaded if needed); what ``siammae-weights path`` prints."""
    if spec in WEIGHTS:
        w = WEIGHTS[spec]
        _notice(w)
        return cached_download(w.url, w.filename, spec, progress)[0]
    if spec.startswith("hf:"):
        return _hf_file(spec)
    if spec.startswith("timm:"):
        weights = _timm_weights(spec)
        if weights.path is None:
            raise CheckpointError(f"{spec}: timm keeps these weights in no single file that could be named")
        return weights.path
    raise unknown_name_error(spec)


def resolve_weights(spec: str | Path, progress: bool = True) -> Weights:
    """A path or a name (module docstring) -> :class:`Weights`, downloading official files on first use."""
    text = str(spec)
    path = Path(spec)
    if path.exists():  # an existing path always wins over a name
        if path.is_file():
            return Weights(text, path, file_sha256(path))
        return Weights(text, path, "")  # a folder: read_checkpoint says what is wrong with it
    if text in WEIGHTS:
        w = WEIGHTS[text]
        _notice(w)
        file, sha = cached_download(w.url, w.filename, text, progress)
        return Weights(text, file, sha, text, w.licence, w.url)
    if text.startswith("timm:"):
        return _timm_weights(text)
    if text.startswith("hf:"):
        file = _hf_file(text)
        return Weights(text, file, _hf_sha256(file), text, None, _hf_url(*_hf_parts(text)))
    if is_name(text):
        raise unknown_name_error(text)
    return Weights(text, path, "")  # a missing file: read_checkpoint names it


def _notice(w: NamedWeights) -> None:
    if w.notice:
        print(w.notice, file=sys.stderr)


def weights_stem(spec: str | Path) -> str:
    """A file-name-safe stem for outputs named after the weights (``dino-vits8``, ``timm-vit_small_patch8_224``)."""
    text = str(spec)
    if Path(text).exists() or not is_name(text):
        return Path(text).stem
    return re.sub(r"[^\w.-]+", "-", text).strip("-.")


# ------------------------------------------------------------------------------------------- Hugging Face hub
def _hf_parts(spec: str) -> tuple[str, str]:
    parts = spec.removeprefix("hf:").split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(f"{spec!r}: expected hf:<owner>/<repo>/<file> (e.g. hf:facebook/dino-vits8/model.pth)")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _hf_url(repo: str, filename: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{filename}"


def _hf_file(spec: str) -> Path:
    """hf:<owner>/<repo>/<file> through ``huggingface_hub`` (its cache; HF_HOME / HF_HUB_CACHE respected)."""
    repo, filename = _hf_parts(spec)
    from huggingface_hub import hf_hub_download  # a dependency of timm, so always installed

    offline = offline_variable()
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=offline is not None))
    except (OSError, ValueError) as e:  # hub errors are OSErrors; offline misses are LocalEntryNotFoundError
        from huggingface_hub import constants

        first = (str(e).splitlines() or [type(e).__name__])[0]
        why = f"downloads are off ({offline}=1)" if offline else first
        raise CheckpointError(
            f"{spec}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: fetch "
            f"{_hf_url(repo, filename)} with network, or download it and pass its path to --ckpt"
        ) from None


def _hf_sha256(file: Path) -> str:
    """sha256 of a hub file, checked against its blob name (the hub names LFS blobs by their sha256)."""
    sha = file_sha256(file)
    blob = file.resolve().name
    if re.fullmatch(r"[0-9a-f]{64}", blob) and blob != sha:
        raise CheckpointError(
            f"{file}: sha256 {sha[:16]}... differs from its blob name {blob[:16]}...: the cached file changed since"
        )
    return sha


# ------------------------------------------------------------------------------------------------------- timm
def _timm_weights(spec: str) -> Weights:
    """timm:<name>: timm's own pretrained loading and cache; the encoder's state dict, without its head."""
    import timm
    from timm.models import get_pretrained_cfg

    name = spec.removeprefix("timm:")
    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        raise CheckpointError(f"{spec}: timm has no pretrained model {name!r}{suggest(name, timm.list_pretrained())}")
    file = _timm_cached_file(cfg)
    offline = offline_variable()
    if offline is not None and file is None:
        where = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
        raise CheckpointError(
            f"{spec}: not in timm's cache and downloads are off ({offline}=1): fetch {where} with network "
            f"(into the Hugging Face cache), or download the weights and pass their path to --ckpt"
        )
    # a cached file is handed to timm directly, so that nothing asks the network (offline, or a slow hub)
    overlay = {"file": str(file)} if file is not None else None
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as e:  # hub / network errors are OSErrors
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{spec}: timm could not load its pretrained weights ({first})") from None
    state = model.state_dict()
    file = file or _timm_cached_file(cfg)
    sha = file_sha256(file) if file is not None else _state_sha256(state)
    url = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
    return Weights(spec, file, sha, spec, cfg.license, url, state)


def _timm_cached_file(cfg) -> Path | None:
    """The file timm loads for ``cfg`` when it is cached already (HF cache, else torch's), or None."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if filename and isinstance(found := try_to_load_from_cache(repo, filename), str):
                return Path(found)
        return None
    if cfg.url:
        path = cache_dir() / cfg.url.rsplit("/", 1)[-1]
        return path if path.is_file() else None
    return None


def _state_sha256(state: dict) -> str:
    """sha256 over a state dict's names and bytes (for weights that live in no single file)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_spec(spec: str | Path) -> None:
    """Raise the error :func:`resolve_weights` would for a missing file or an unknown name, without downloading,
    hashing or importing torch: commands call it first, so that a typo fails in a fraction of a second."""
    text = str(spec)
    if Path(spec).exists() or text in WEIGHTS or text.startswith(("timm:", "hf:")):
        return
    if is_name(text):
        raise unknown_name_error(text)
    raise CheckpointError(f"{spec}: no such file")
