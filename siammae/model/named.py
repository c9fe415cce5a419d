"""The weight files siammae knows by name, and the checks a file must pass to enter the cache as one.

Two kinds of name. ``download``: an official file (DINO, MAE), fetched into torch's cache by :mod:`siammae.model.hub`;
before it is kept (downloaded, placed there by hand, or ``siammae-weights import``) it must match the hash its
publisher states where one is stated (:class:`Pin`) and load with ``weights_only=True`` as a ViT state dict of the
name's patch size, width and depth, every tensor finite; its sha256 is then recorded beside it and checked on every
later use. ``shipped``: ``siammae-cpu``, a SiamMAE encoder trained by this project and shipped inside the package
(:mod:`siammae.model.packaged`): no network, no cache. What was checked is the
:class:`~siammae.model.provenance.Provenance` of the weights: ``verified`` only against a published hash.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.io import atomic_write
from siammae.model import packaged
from siammae.model.hub import (
    Digests,
    cache_dir,
    check_reachable,
    check_recorded,
    delete_hint,
    download,
    file_digests,
    offline_variable,
    record_sha256,
    url_base,
)
from siammae.model.packaged import SHIPPED, read_shipped  # noqa: F401  (public here)
from siammae.model.provenance import Provenance

# DAVIS-2017 val J&F of frozen features with label propagation: DINO paper (Caron et al. 2021), Table 5 / App.
_DINO = "DINO (Caron et al. 2021)"
_MAE_NOTICE = (
    "note: mae-vitb16 weights are licensed CC-BY-NC 4.0 (non-commercial use only; "
    "https://github.com/facebookresearch/mae/blob/main/LICENSE)"
)
_TOFU = "no published hash: sha256 recorded at first use and checked from then on (trust on first use)"


@dataclass(frozen=True)
class Pin:
    """A hash of an official file as its publisher states it: ``algorithm`` "sha256" or "md5", ``digest`` the hex
    digits given (a publisher may give only a prefix), ``source`` where it is stated."""

    algorithm: str
    digest: str
    source: str

    def matches(self, digests: Digests) -> bool:
        return getattr(digests, self.algorithm).startswith(self.digest.lower())

    def describe(self) -> str:
        whole = len(self.digest) == {"sha256": 64, "md5": 32}[self.algorithm]
        return f"{self.algorithm}{'' if whole else ' prefix'} {self.digest} published at {self.source}"


# MAE's README lists the md5 of each pre-trained checkpoint, as its first 6 hex digits ("md5 8cad7c" for ViT-Base):
# https://github.com/facebookresearch/mae/blob/main/README.md, "Fine-tuning with pre-trained checkpoints". Six digits
# (24 bits) catch a wrong, truncated or corrupt file, not a forgery made to match. DINO's README
# (https://github.com/facebookresearch/dino#pretrained-models) states no hash of its files: the DINO names are
# unpinned (trust on first use, reported "unverified").
_MAE_PIN = Pin("md5", "8cad7c", "https://github.com/facebookresearch/mae#fine-tuning-with-pre-trained-checkpoints")


@dataclass(frozen=True)
class NamedWeights:
    """A weight file known by name: an official download, or (``kind="shipped"``) the file in the package."""

    name: str
    arch: str  # "ViT-S/16"
    url_path: str  # path under the URL base (https://dl.fbaipublicfiles.com); "" for a shipped file
    licence: str
    source: str
    davis_jf: float | None = None  # DAVIS-2017 val J&F-Mean reported by the source paper
    embed_dim: int = 384
    patch_size: int = 16
    notice: str | None = None  # printed (stderr) whenever the weights are used
    depth: int = 12
    pin: Pin | None = None  # the hash its publisher states, if any
    kind: str = "download"  # or "shipped"

    @property
    def filename(self) -> str:
        return self.url_path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return url_base() + self.url_path

    @property
    def path(self) -> Path:
        """Where the file is, or goes when downloaded."""
        return packaged.shipped_file() if self.kind == "shipped" else cache_dir() / self.filename

    @property
    def approx_mb(self) -> float:
        """Download size from the architecture: a ViT at 224 px, fp32 (the files hold nothing else)."""
        d, p = self.embed_dim, self.patch_size
        params = self.depth * (12 * d * d + 13 * d) + 3 * p * p * d + d + ((224 // p) ** 2 + 2) * d + 2 * d
        return params * 4 / 1e6

    @property
    def check(self) -> str:
        return self.pin.describe() if self.pin is not None else _TOFU


def _dino(name: str, arch: str, stem: str, jf: float, d: int, p: int) -> NamedWeights:
    return NamedWeights(name, arch, f"/dino/{stem}/{stem}.pth", "Apache-2.0", _DINO, jf, d, p)


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
            pin=_MAE_PIN,
        ),  # fmt: skip
        NamedWeights(SHIPPED, "SiamMAE", "", "CC-BY-NC-4.0", "trained by siammae (README, Weights)", kind="shipped"),
    )
}

# The model the commands use without --ckpt: DINO ViT-S/16. At 480p it needs 1/8.8 of ViT-S/8's FLOPs and ran 7-19x
# faster on a 2-core CPU (benchmarks/results/bench_default_weights-cpu.md, bench_encoder-cpu.md), so the card's
# command finishes on a laptop; ViT-S/8 is +8.1 J&F on DAVIS, one flag away (--ckpt dino-vits8). README "Weights".
DEFAULT_WEIGHTS = "dino-vits16"


def short(text: str, n: int = 60, limit: int = 200) -> str:
    """``text`` for a message, cut to ``n`` characters and its length when longer than ``limit``."""
    return text if len(text) <= limit else f"{text[:n]}... ({len(text)} characters)"


def path_exists(path: Path) -> bool:
    """``path.exists()``, False for a name the OS cannot hold as a file (too long), which then reads as a name."""
    try:
        return path.exists()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return False
        raise CheckpointError(f"{short(str(path))}: {e.strerror or e}") from None


def suggest(spec: str, names: list[str] | None = None) -> str:
    """'; did you mean a, b?' for the known names closest to ``spec`` (difflib), or ''."""
    close = difflib.get_close_matches(spec, names if names is not None else list(WEIGHTS), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown_name_error(spec: str) -> CheckpointError:
    return CheckpointError(
        f"{short(spec)!r} is neither a file nor a known weights name{suggest(spec[:100])} (known: "
        f"{', '.join(WEIGHTS)}, timm:<name>, hf:<owner>/<repo>/<file>; siammae-weights list)"
    )


def import_hint(name: str) -> str:
    """The end of every error about getting a named file: how to bring it from another machine."""
    return f"; or fetch it on a machine with network and run 'siammae-weights import FILE {name}' here"


def print_notice(w: NamedWeights) -> None:
    if w.notice:
        print(w.notice, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ named files
def check_file(path: Path, w: NamedWeights, label: str | None = None) -> Digests:
    """That ``path`` is ``w``'s file: its publisher's hash (when pinned), then that it loads with
    ``weights_only=True`` as a ViT state dict of ``w``'s patch size, width and depth, every tensor finite. ``label``
    names the file in messages (a URL while a download is checked). Returns the file's digests."""
    label = label or str(path)
    digests = file_digests(path)
    _check_pin(w, digests, label)
    cfg = check_vit(path, label, f"the {w.name} ({w.arch}) weights")
    found, want = (cfg.patch_size, cfg.embed_dim, cfg.depth), (w.patch_size, w.embed_dim, w.depth)
    if found != want:
        raise CheckpointError(
            f"{label}: not the {w.name} ({w.arch}) weights: patch {found[0]}, width {found[1]}, {found[2]} blocks in "
            f"the file, expected patch {want[0]}, width {want[1]}, {want[2]} blocks"
        )
    return digests


def check_vit(path: Path, label: str, what: str = "ViT weights"):
    """That ``path`` loads with ``weights_only=True`` as a ViT encoder state dict (not a siammae checkpoint), every
    tensor finite; returns its inferred :class:`~siammae.model.config.ModelConfig`."""
    from siammae.model.statedict import check_finite, encoder_state, infer_config, read_checkpoint

    ckpt = read_checkpoint(path, label=label)
    if ckpt.get("format") == "siammae":
        raise CheckpointError(f"{label}: a siammae checkpoint, not {what}")
    state = encoder_state(Path(label), ckpt)
    cfg = infer_config(Path(label), state)
    check_finite(Path(label), state)
    return cfg


def _check_pin(w: NamedWeights, digests: Digests, label: str) -> None:
    if w.pin is not None and not w.pin.matches(digests):
        got = getattr(digests, w.pin.algorithm)[: max(len(w.pin.digest), 12)]
        raise CheckpointError(
            f"{label}: {w.pin.algorithm} {got} does not match the {w.pin.describe()}: not the official {w.name} file"
        )


def _provenance(w: NamedWeights, path: Path, digests: Digests, origin: str) -> Provenance:
    verified = w.pin is not None and w.pin.matches(digests)
    return Provenance(w.name, str(path), digests.sha256, w.url, origin, verified, w.check, w.licence, w.notice)


def _cached_named(w: NamedWeights, path: Path, check_load: bool) -> Provenance:
    """A named file already in the cache: checked against its record and pin; loaded too (``check_load``) when it
    has no record (placed by hand) or when asked (``siammae-weights download``: a record proves no load). Every
    failure names the file to delete."""
    digests = file_digests(path)
    try:
        recorded = check_recorded(path, digests.sha256)
        _check_pin(w, digests, str(path))
        if check_load or not recorded:
            check_file(path, w)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {delete_hint(path)}{import_hint(w.name)}") from None
    if not recorded:
        record_sha256(path, digests.sha256)  # placed by hand: from now on a change is an error
    return _provenance(w, path, digests, "in the cache" if recorded else "placed in the cache by hand")


def fetch_named(w: NamedWeights, progress: bool = True, check_load: bool = False) -> Provenance:
    """``w``'s file: the shipped one, or the cached one (downloaded first when it is not there, checked before it
    is kept)."""
    if w.kind == "shipped":
        return packaged.provenance(w.name)
    path = w.path
    if path.is_file():
        return _cached_named(w, path, check_load)
    if (var := offline_variable()) is not None:
        raise CheckpointError(
            f"{w.name} is not in the cache and downloads are off ({var}=1): fetch {w.url} and put it at {path}, or "
            f"run 'siammae-weights import FILE {w.name}' with the file"
        )
    hint = f"; or fetch it yourself and put it at {path}{import_hint(w.name)}"
    pin = w.pin.digest if w.pin is not None and w.pin.algorithm == "sha256" else None  # torch.hub checks sha256 only
    download(w.url, path, progress, validate=lambda tmp, url: check_file(tmp, w, label=url), hash_prefix=pin, hint=hint)
    digests = file_digests(path)  # remembered from the check of the temporary file (same inode): not read again
    record_sha256(path, digests.sha256)
    return _provenance(w, path, digests, f"downloaded from {w.url}")


def can_fetch_quickly(w: NamedWeights) -> str | None:
    """None when ``w`` is cached or may be downloaded now; else why not (offline, no connection), in a few words.
    Takes at most ``hub.CONNECT_TIMEOUT_S``."""
    if w.kind == "shipped" or w.path.is_file():
        return None
    if (var := offline_variable()) is not None:
        return f"not in the cache and downloads are off ({var}=1)"
    try:
        check_reachable(w.url, "")
    except CheckpointError as e:
        return f"not in the cache and {str(e).split(': ', 1)[-1]}"
    return None


def import_weights(file: str | os.PathLike, name: str) -> Provenance:
    """Put ``file`` into the cache as the named weights ``name`` (``siammae-weights import``): the file must match
    the name's published hash where there is one and load as its architecture; it is copied atomically (temp file
    + rename) to where the loader looks, with its sha256 recorded. Unpinned names are recorded "unverified"."""
    if name not in WEIGHTS:
        raise unknown_name_error(name)
    w, file = WEIGHTS[name], Path(file)
    if w.kind == "shipped":
        raise CheckpointError(f"{name} is shipped inside the siammae package: there is nothing to import")
    if not path_exists(file) or not file.is_file():
        raise CheckpointError(f"{short(str(file))}: no such file")
    digests = check_file(file, w)
    try:
        with atomic_write(w.path) as tmp:
            shutil.copyfile(file, tmp)
            if file_digests(tmp) != digests:  # changed while it was copied
                raise CheckpointError(f"{file}: changed while it was copied into the cache; nothing was kept")
        record_sha256(w.path, digests.sha256)
    except OSError as e:
        raise CheckpointError(f"cannot write {w.path}: {e.strerror or e}") from None
    return _provenance(w, w.path, digests, f"imported from {file.resolve()}")


def default_or_shipped(progress: bool = True) -> tuple[Provenance, str | None]:
    """The weights the commands use without ``--ckpt``: (the default's provenance, None) when it can be had without
    waiting (cached, or downloadable now: it is downloaded); else, when the package ships ``siammae-cpu``, (its
    provenance, :func:`shipped_fallback_notice`), the one warning line to print. Without the shipped file, the
    default's own one-line error. ``load_model(provenance.weights)`` then loads the chosen weights."""
    w = WEIGHTS[DEFAULT_WEIGHTS]
    why = can_fetch_quickly(w)
    if why is None or not packaged.shipped_file().is_file():
        return fetch_named(w, progress), None
    return packaged.provenance(SHIPPED), shipped_fallback_notice(why)


def shipped_fallback_notice(why: str = "cannot be had") -> str:
    """The one warning line printed when the default weights cannot be had and ``siammae-cpu`` is used instead:
    what it is, how good (from its card), how to get the default."""
    return packaged.fallback_notice(DEFAULT_WEIGHTS, why)


def export_shipped(model_or_ckpt_path, card: dict, out_path: str | os.PathLike) -> Path:
    """Write a shipped file (module docstring) from a SiamMAE / ViTEncoder or a siammae checkpoint's path: the
    encoder's weights only, in fp16, every one finite, with its config and ``card``; atomically. Returns the path."""
    import torch
    from safetensors.torch import save_file

    from siammae.model.config import ModelConfig
    from siammae.model.statedict import check_finite, read_checkpoint

    packaged.check_card(card, "export_shipped")
    if isinstance(model_or_ckpt_path, torch.nn.Module):
        encoder = getattr(model_or_ckpt_path, "encoder", model_or_ckpt_path)  # SiamMAE -> its encoder
        config, state = encoder.config.to_dict(), encoder.state_dict()
    else:
        ckpt = read_checkpoint(model_or_ckpt_path)
        if ckpt.get("format") != "siammae":
            raise CheckpointError(f"{model_or_ckpt_path}: not a siammae checkpoint")
        config, state = ckpt["config"], ckpt["model"]
        if ckpt.get("kind", "siammae") == "siammae":
            state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    ModelConfig.from_dict(config)  # a config that builds
    check_finite(Path(str(model_or_ckpt_path)[:100]), state)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    meta = {"format": packaged.FORMAT, "version": "1", "config": json.dumps(config), "card": json.dumps(card)}
    with atomic_write(out_path) as tmp:
        save_file(half, str(tmp), metadata=meta)
    return Path(out_path)
