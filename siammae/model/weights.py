"""Pretrained weights by name: what ``--ckpt`` and :func:`siammae.load_model` accept besides a path.

    dino-vits16 ... dino-vitb8   the official DINO backbones (Caron et al. 2021), Apache-2.0
    mae-vitb16                   the official MAE ViT-B/16 (He et al. 2022), CC-BY-NC 4.0 (non-commercial)
    timm:<name>                  timm's pretrained weights (``timm:vit_small_patch8_224.dino``), timm's own cache
    hf:<owner>/<repo>/<file>     a ViT checkpoint on the Hugging Face hub, the Hugging Face cache
    a path                       as always; an existing path wins over a name

:func:`resolve_weights` turns any of them into a :class:`Weights`: the file (or, for timm, the state dict) and its
:class:`~siammae.model.provenance.Provenance`, the record that the reports of tracking, evaluation, export and
training carry. Official files are fetched and cached by :mod:`siammae.model.hub`; before a file enters the cache
(downloaded, placed by hand, or :func:`import_weights`) it must load with ``weights_only=True`` as a ViT of the
name's architecture, and match the hash its publisher states where one is stated (:data:`WEIGHTS`, ``pin``).
:data:`DEFAULT_WEIGHTS` is what the commands use when given no ``--ckpt`` (README, "Weights", says why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.model.hub import cache_dir, file_sha256, offline_variable
from siammae.model.named import (  # noqa: F401  (WEIGHTS, DEFAULT_WEIGHTS, NamedWeights, import_weights: public here)
    DEFAULT_WEIGHTS,
    WEIGHTS,
    NamedWeights,
    Pin,
    fetch_named,
    import_weights,
    path_exists,
    print_notice,
    short,
    suggest,
    unknown_name_error,
)
from siammae.model.provenance import Provenance


@dataclass(frozen=True)
class Weights:
    """Resolved weights: a file (``path``), or for timm a state dict (``state``), and where they came from."""

    spec: str  # what was asked for: a name or a path
    path: Path | None
    provenance: Provenance | None  # None only for a path that does not exist or is a folder (the loader names it)
    in_cache: bool = False  # the file is a cached named weight (its load errors say what to delete)
    state: dict | None = field(default=None, repr=False, compare=False)

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
    """One row per named weight: name, architecture, size (MB; the file's once cached), licence, DAVIS J&F, cached,
    and whether its publisher states a hash to check it against (``pinned``)."""
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
                "pinned": w.pin is not None,
                "default": w.name == DEFAULT_WEIGHTS,
                "path": str(path),
                "url": w.url,
            }
        )
    return rows


def weights_location(spec: str) -> tuple[Path, bool]:
    """(the local file of a named weight, whether it is there): what ``siammae-weights path`` prints. Nothing is
    downloaded."""
    if spec in WEIGHTS:
        path = cache_dir() / WEIGHTS[spec].filename
        return path, path.is_file()
    if spec.startswith("hf:"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = _hf_parts(spec)
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found), True
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return folder, False
    if spec.startswith("timm:"):
        cfg = _timm_cfg(spec)
        file = _timm_cached_file(cfg)
        if file is not None:
            return file, True
        if cfg.hf_hub_id:  # timm fetches from the hub when the model has a hub id, as _timm_cached_file looks
            from huggingface_hub import constants

            return Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.split('@')[0].replace('/', '--')}", False
        if cfg.url:
            return cache_dir() / cfg.url.rsplit("/", 1)[-1], False
        raise CheckpointError(f"{spec}: timm keeps these weights in no single file that could be named")
    raise unknown_name_error(spec)


def download_weights(spec: str, progress: bool = True) -> Provenance:
    """Fetch a name into its cache (a cached file is checked, not fetched again): ``siammae-weights download``."""
    if spec in WEIGHTS:
        return fetch_named(WEIGHTS[spec], progress)
    if spec.startswith(("hf:", "timm:")):
        return resolve_weights(spec, progress).provenance
    raise unknown_name_error(spec)


def resolve_weights(spec: str | Path, progress: bool = True) -> Weights:
    """A path or a name (module docstring) -> :class:`Weights`, downloading official files on first use."""
    text = str(spec)
    path = Path(spec)
    if path_exists(path):  # an existing path always wins over a name
        if path.is_file():
            prov = Provenance(text, text, file_sha256(path), check="a local file: no published hash")
            return Weights(text, path, prov)
        return Weights(text, path, None)  # a folder: read_checkpoint says what is wrong with it
    if text in WEIGHTS:
        w = WEIGHTS[text]
        print_notice(w)
        prov = fetch_named(w, progress)
        return Weights(text, Path(prov.path), prov, in_cache=True)
    if text.startswith("timm:"):
        return _timm_weights(text)
    if text.startswith("hf:"):
        file = _hf_file(text)
        prov = Provenance(
            text, str(file), _hf_sha256(file), _hf_url(*_hf_parts(text)), "the Hugging Face cache",
            check="sha256 matches the Hugging Face hub's record of the file (not pinned by siammae)",
        )  # fmt: skip
        return Weights(text, file, prov)
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
def _timm_cfg(spec: str):
    """timm's pretrained config of ``timm:<name>``; an unknown name suggests close ones."""
    import timm
    from timm.models import get_pretrained_cfg

    name = spec.removeprefix("timm:")
    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        raise CheckpointError(f"{spec}: timm has no pretrained model {name!r}{suggest(name, timm.list_pretrained())}")
    return cfg


def _timm_weights(spec: str) -> Weights:
    """timm:<name>: timm's own pretrained loading and cache; the encoder's state dict, without its head."""
    import timm

    name = spec.removeprefix("timm:")
    cfg = _timm_cfg(spec)
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
    prov = Provenance(spec, str(file) if file is not None else None, sha, url, "timm's cache",
                      check="timm's pretrained loading (not pinned by siammae)", licence=cfg.license)  # fmt: skip
    return Weights(spec, file, prov, state=state)


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
    if path_exists(Path(spec)) or text in WEIGHTS or text.startswith(("timm:", "hf:")):
        return
    if is_name(text):
        raise unknown_name_error(text)
    raise CheckpointError(f"{short(text)}: no such file")
