"""Pretrained weights by name: what ``--ckpt`` and :func:`siammae.load_model` accept besides a path.

    dino-vits16 ... dino-vitb8   the official DINO backbones (Caron et al. 2021), Apache-2.0
    mae-vitb16                   the official MAE ViT-B/16 (He et al. 2022), CC-BY-NC 4.0 (non-commercial)
    siammae-cpu                  the SiamMAE encoder shipped inside the package (CC-BY-NC 4.0 data)
    timm:<name>                  timm's pretrained weights (``timm:vit_small_patch8_224.dino``), from timm's Hub copy
    hf:<owner>/<repo>/<file>     a ViT checkpoint on the Hugging Face hub, the Hugging Face cache; ``@<commit>``
                                 after the file pins it (and so its sha256)
    a path                       as always; an existing path wins over a name

:func:`resolve_weights` turns any of them into a :class:`Weights`: the file and its
:class:`~siammae.model.provenance.Provenance`, the record that the reports of tracking, evaluation, export and
training carry. Named files are fetched and checked by :mod:`siammae.model.named`; ``timm:`` and ``hf:`` files come
through ``huggingface_hub`` (:func:`siammae.model.hub.hf_file`), a ``timm:`` name as the file on the Hub that timm's
pretrained config names. :data:`DEFAULT_WEIGHTS` is what the commands use when given no ``--ckpt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.model.hub import cache_dir, download, file_sha256, hf_file, offline_variable
from siammae.model.named import (  # noqa: F401  (WEIGHTS, DEFAULT_WEIGHTS, NamedWeights, import_weights: public here)
    DEFAULT_WEIGHTS,
    WEIGHTS,
    NamedWeights,
    Pin,
    check_vit,
    default_or_shipped,
    export_shipped,
    fetch_named,
    import_weights,
    path_exists,
    print_notice,
    read_shipped,
    shipped_fallback_notice,
    short,
    suggest,
    unknown_name_error,
)
from siammae.model.packaged import summary
from siammae.model.provenance import Provenance


@dataclass(frozen=True)
class Weights:
    """Resolved weights: a file (``path``) and where it came from."""

    spec: str  # what was asked for: a name or a path
    path: Path | None
    provenance: Provenance | None  # None only for a path that does not exist or is a folder (the loader names it)
    in_cache: bool = False  # the file is a cached named weight (its load errors say what to delete)

    @property
    def sha256(self) -> str:
        return self.provenance.sha256 if self.provenance is not None else ""


def list_weights() -> list[str]:
    """The names :func:`resolve_weights` knows (besides ``timm:`` and ``hf:``)."""
    return list(WEIGHTS)


def is_name(spec: str) -> bool:
    """Whether ``spec`` reads as a weights name rather than a file path (no folder, no file suffix)."""
    return spec.startswith(("timm:", "hf:")) or ("/" not in spec and "\\" not in spec and not Path(spec).suffix)


def weights_table() -> list[dict]:
    """One row per named weight: name, architecture, size (MB; the file's once cached; None for a shipped file),
    licence, DAVIS J&F, cached / in the package, whether its publisher states a hash (``pinned``), and for the
    shipped file its card's one-line ``summary`` (or None: "not in this build")."""
    rows = []
    for w in WEIGHTS.values():
        path, shipped = w.path, w.kind == "shipped"
        present = path.is_file()
        row = {"name": w.name, "arch": w.arch, "kind": w.kind, "licence": w.licence, "davis_jf": w.davis_jf,
               "cached": present, "pinned": w.pin is not None, "default": w.name == DEFAULT_WEIGHTS,
               "path": str(path), "url": None if shipped else w.url, "summary": None,
               "size_mb": round(path.stat().st_size / 1e6 if present else w.approx_mb, 1)}  # fmt: skip
        if shipped and present:
            config, card = read_shipped(path)
            arch = f"ViT/{config.get('patch_size', 16)} ({config.get('embed_dim', 384)} wide)"
            row |= {"arch": arch, "licence": card["licence"], "davis_jf": card["davis_jf"], "summary": summary(card)}
        rows.append(row)
    return rows


def weights_location(spec: str) -> tuple[Path, bool]:
    """(the local file of a named weight, whether it is there): what ``siammae-weights path`` prints. Nothing is
    downloaded."""
    if spec in WEIGHTS:
        return WEIGHTS[spec].path, WEIGHTS[spec].path.is_file()
    if not spec.startswith(("hf:", "timm:")):
        raise unknown_name_error(spec)
    from huggingface_hub import constants, try_to_load_from_cache

    repo, filename, revision, url = _hub_source(spec)
    if repo is None:
        path = cache_dir() / url.rsplit("/", 1)[-1]
        return path, path.is_file()
    found = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(found, str):
        return Path(found), True
    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}", False


def download_weights(spec: str, progress: bool = True) -> Provenance:
    """Fetch a name into its cache (``siammae-weights download``); a cached file is checked (that it loads as the
    name's weights, not only its sha256 record), not fetched again."""
    if spec in WEIGHTS:
        return fetch_named(WEIGHTS[spec], progress, check_load=True)
    if spec.startswith(("hf:", "timm:")):
        return resolve_weights(spec, progress).provenance
    raise unknown_name_error(spec)


def resolve_weights(spec: str | Path, progress: bool = True) -> Weights:
    """A path or a name (module docstring) -> :class:`Weights`, downloading official files on first use."""
    text, path = str(spec), Path(spec)
    if path_exists(path):  # an existing path always wins over a name
        if path.is_file():
            return Weights(
                text, path, Provenance(text, text, file_sha256(path), check="a local file: no published hash")
            )
        return Weights(text, path, None)  # a folder: read_checkpoint says what is wrong with it
    if text in WEIGHTS:
        w = WEIGHTS[text]
        print_notice(w)
        prov = fetch_named(w, progress)
        return Weights(text, Path(prov.path), prov, in_cache=w.kind != "shipped")
    if text.startswith(("timm:", "hf:")):
        return _hub_weights(text, progress)
    if is_name(text):
        raise unknown_name_error(text)
    return Weights(text, path, None)  # a missing file: read_checkpoint names it


def fetch_once_per_machine(spec: str | Path, rank, progress: bool = True) -> None:
    """Under torchrun (``rank``: :class:`siammae.torchrun.Rank`), weights given by name are fetched into this
    machine's cache on local rank 0 while the other ranks wait: one download per machine, not per process, and a
    failed download is the same error on every rank. Every rank then loads them from the cache. A path, or one
    process, needs nothing."""
    if not rank.distributed or path_exists(Path(spec)):
        return
    from siammae.torchrun import first_on_local_rank0

    first_on_local_rank0(rank, lambda: resolve_weights(spec, progress=progress and rank.local_rank == 0))


def weights_stem(spec: str | Path) -> str:
    """A file-name-safe stem for outputs named after the weights (``dino-vits8``, ``timm-vit_small_patch8_224``)."""
    text = str(spec)
    if path_exists(Path(text)) or not is_name(text):
        return Path(text).stem[:100]
    return re.sub(r"[^\w.-]+", "-", text).strip("-.")[:100]


def check_spec(spec: str | Path) -> None:
    """Raise the error :func:`resolve_weights` would for a missing file or an unknown name, without downloading,
    hashing or importing torch: commands call it first, so that a typo fails in a fraction of a second."""
    text = str(spec)
    if path_exists(Path(spec)) or text in WEIGHTS or text.startswith(("timm:", "hf:")):
        return
    if is_name(text):
        raise unknown_name_error(text)
    raise CheckpointError(f"{short(text)}: no such file")


# ------------------------------------------------------------------------------------------- timm: and hf: names
def _hub_source(spec: str) -> tuple[str | None, str | None, str | None, str]:
    """(Hub repo, file, revision, URL) of ``hf:<owner>/<repo>/<file>`` or ``timm:<name>`` (the Hub copy that timm's
    pretrained config names; repo None for a model timm fetches from a plain URL)."""
    if spec.startswith("hf:"):
        parts = spec.removeprefix("hf:").split("/")
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(
                f"{spec!r}: expected hf:<owner>/<repo>/<file> (e.g. hf:facebook/dino-vits8/model.pth)"
            )
        repo, (filename, _, revision) = "/".join(parts[:2]), "/".join(parts[2:]).partition("@")
        url = f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{filename}"
        return repo, filename, revision or None, url  # a revision (a commit) pins the file, its sha256 with it
    cfg = _timm_cfg(spec)
    if not cfg.hf_hub_id:
        return None, None, None, cfg.url
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, cfg.hf_hub_filename or "model.safetensors", revision or None, f"https://huggingface.co/{repo}"


def _timm_cfg(spec: str):
    """timm's pretrained config of ``timm:<name>``; an unknown name suggests close ones."""
    import timm
    from timm.models import get_pretrained_cfg

    name = spec.removeprefix("timm:")
    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise CheckpointError(f"{spec}: timm has no pretrained model {name!r}{suggest(name, timm.list_pretrained())}")
    return cfg


def _hub_weights(spec: str, progress: bool) -> Weights:
    """timm:<name> / hf:<...>: the file from the Hugging Face cache (fetched there when absent), or for a timm model
    with a plain URL, from torch's cache (fetched there, checked as a ViT state dict first)."""
    repo, filename, revision, url = _hub_source(spec)
    hint = f"; or download {url} on a machine with network and pass the file to --ckpt"
    if repo is not None:
        try:
            file = hf_file(repo, filename, revision, hint)
        except CheckpointError as e:
            raise CheckpointError(f"{spec}: {e}") from None
        origin, check = "the Hugging Face cache", "sha256 matches the Hugging Face hub's record of the file"
    else:
        file = cache_dir() / url.rsplit("/", 1)[-1]
        if not file.is_file():
            if (var := offline_variable()) is not None:
                raise CheckpointError(f"{spec}: not in torch's cache and downloads are off ({var}=1){hint}")
            download(url, file, progress, validate=lambda tmp, u: check_vit(tmp, u) and None, hint=hint)
        origin, check = "torch's cache", "timm's pretrained URL (not pinned by siammae)"
    licence = _timm_cfg(spec).license if spec.startswith("timm:") else None
    return Weights(spec, file, Provenance(spec, str(file), file_sha256(file), url, origin, False, check, licence))
