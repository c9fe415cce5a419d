"""The official weight files siammae knows by name, and the checks a file must pass to enter the cache as one.

Before a file is kept in the cache as a named weight (downloaded, placed there by hand, or ``siammae-weights import``)
it must match the hash its publisher states where one is stated (:class:`Pin`), and load with ``weights_only=True``
as a ViT state dict of the name's patch size, width and depth. Its sha256 is then recorded beside it
(:mod:`siammae.model.hub`) and checked on every later use; every failure names the file to delete. What was checked
is the :class:`~siammae.model.provenance.Provenance` of the weights: ``verified`` only against a published hash.
"""

from __future__ import annotations

import difflib
import errno
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.io import atomic_write
from siammae.model.hub import (
    Digests,
    cache_dir,
    check_recorded,
    delete_hint,
    download,
    file_digests,
    offline_variable,
    record_sha256,
    url_base,
)
from siammae.model.provenance import Provenance

# DAVIS-2017 val J&F of frozen features with label propagation: DINO paper (Caron et al. 2021), Table 5 / App.
_DINO = "DINO (Caron et al. 2021)"
_APACHE = "Apache-2.0"
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
        what = self.algorithm if whole else f"{self.algorithm} prefix"
        return f"{what} {self.digest} published at {self.source}"


# MAE's README lists the md5 of each pre-trained checkpoint, as its first 6 hex digits ("md5 8cad7c" for ViT-Base):
# https://github.com/facebookresearch/mae/blob/main/README.md, "Fine-tuning with pre-trained checkpoints". Six digits
# (24 bits) catch a wrong, truncated or corrupt file, not a forgery made to match. DINO's README
# (https://github.com/facebookresearch/dino#pretrained-models) states no hash of its files, and no reliable source
# that states one was found: the DINO names are unpinned (trust on first use, reported "unverified").
_MAE_PIN = Pin("md5", "8cad7c", "https://github.com/facebookresearch/mae#fine-tuning-with-pre-trained-checkpoints")


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
    depth: int = 12
    pin: Pin | None = None  # the hash its publisher states, if any

    @property
    def filename(self) -> str:
        return self.url_path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return url_base() + self.url_path

    @property
    def approx_mb(self) -> float:
        """Download size from the architecture: a ViT at 224 px, fp32 (the files hold nothing else)."""
        d, p, depth = self.embed_dim, self.patch_size, self.depth
        grid = (224 // p) ** 2
        params = depth * (12 * d * d + 13 * d) + 3 * p * p * d + d + (grid + 2) * d + 2 * d
        return params * 4 / 1e6

    @property
    def check(self) -> str:
        return self.pin.describe() if self.pin is not None else _TOFU


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
            pin=_MAE_PIN,
        ),
    )
}

# The model the commands use without --ckpt: DINO ViT-S/16. At 480p it needs 1/8.8 of ViT-S/8's FLOPs and ran 7-19x
# faster on a 2-core CPU (benchmarks/results/bench_default_weights-cpu.md, bench_encoder-cpu.md), so the card's
# command finishes on a laptop; ViT-S/8 is +8.1 J&F on DAVIS, one flag away (--ckpt dino-vits8). README "Weights".
DEFAULT_WEIGHTS = "dino-vits16"


def short(text: str, n: int = 60, limit: int = 200) -> str:
    """``text`` for a message, cut to ``n`` characters and its length when longer than ``limit`` (a 300-character
    --ckpt)."""
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
    known = ", ".join(WEIGHTS)
    return CheckpointError(
        f"{short(spec)!r} is neither a file nor a known weights name{suggest(spec[:100])} (known: {known}, "
        f"timm:<name>, hf:<owner>/<repo>/<file>; siammae-weights list)"
    )


def print_notice(w: NamedWeights) -> None:
    if w.notice:
        print(w.notice, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ named files
def check_file(path: Path, w: NamedWeights, label: str | None = None) -> Digests:
    """That ``path`` is ``w``'s file: its publisher's hash (when pinned), then that it loads with
    ``weights_only=True`` as a ViT state dict of ``w``'s patch size, width and depth. ``label`` names the file in
    messages (a URL while a download is checked). Returns the file's digests."""
    from siammae.model.statedict import encoder_state, infer_config, read_checkpoint

    label = label or str(path)
    digests = file_digests(path)
    _check_pin(w, digests, label)
    ckpt = read_checkpoint(path, label=label)
    if ckpt.get("format") == "siammae":
        raise CheckpointError(f"{label}: a siammae checkpoint, not the {w.name} ({w.arch}) weights")
    cfg = infer_config(Path(label), encoder_state(Path(label), ckpt))
    found, want = (cfg.patch_size, cfg.embed_dim, cfg.depth), (w.patch_size, w.embed_dim, w.depth)
    if found != want:
        raise CheckpointError(
            f"{label}: not the {w.name} ({w.arch}) weights: patch {found[0]}, width {found[1]}, {found[2]} blocks in "
            f"the file, expected patch {want[0]}, width {want[1]}, {want[2]} blocks"
        )
    return digests


def _check_pin(w: NamedWeights, digests: Digests, label: str) -> None:
    if w.pin is not None and not w.pin.matches(digests):
        got = getattr(digests, w.pin.algorithm)
        raise CheckpointError(
            f"{label}: {w.pin.algorithm} {got[: max(len(w.pin.digest), 12)]} does not match the "
            f"{w.pin.describe()}: not the official {w.name} file"
        )


def _provenance(w: NamedWeights, path: Path, digests: Digests, origin: str) -> Provenance:
    verified = w.pin is not None and w.pin.matches(digests)
    return Provenance(w.name, str(path), digests.sha256, w.url, origin, verified, w.check, w.licence, w.notice)


def _cached_named(w: NamedWeights, path: Path) -> Provenance:
    """A named file already in the cache: checked against its pin and its record (a file placed by hand, with no
    record, is checked as a download is and recorded). Every failure names the file to delete."""
    digests = file_digests(path)
    try:
        recorded = check_recorded(path, digests.sha256)
        _check_pin(w, digests, str(path))
        if not recorded:  # placed by hand (or by an older siammae): checked as a download is
            check_file(path, w)
    except CheckpointError as e:
        text = str(e)
        raise CheckpointError(text if "delete " in text else f"{text}; {delete_hint(path)}") from None
    if not recorded:
        record_sha256(path, digests.sha256)  # placed by hand: from now on a change is an error
    return _provenance(w, path, digests, "in the cache" if recorded else "placed in the cache by hand")


def _offline_error(w: NamedWeights, path: Path, var: str) -> CheckpointError:
    return CheckpointError(
        f"{w.name} is not in the cache and downloads are off ({var}=1): fetch {w.url} and put it at {path}, or run "
        f"'siammae-weights import FILE {w.name}' with the file"
    )


def fetch_named(w: NamedWeights, progress: bool = True) -> Provenance:
    """``w``'s file in the cache, downloaded first when it is not there (checked before it is kept)."""
    path = cache_dir() / w.filename
    if path.is_file():
        return _cached_named(w, path)
    var = offline_variable()
    if var is not None:
        raise _offline_error(w, path, var)
    download(w.url, path, progress, validate=lambda tmp, url: check_file(tmp, w, label=url))
    digests = file_digests(path)  # remembered from the check of the temporary file (same inode): not read again
    record_sha256(path, digests.sha256)
    return _provenance(w, path, digests, f"downloaded from {w.url}")


def import_weights(file: str | os.PathLike, name: str) -> Provenance:
    """Put ``file`` into the cache as the named weights ``name`` (``siammae-weights import``): the file must match
    the name's published hash where there is one and load as its architecture; it is copied atomically (temp file
    + rename) to where the loader looks, with its sha256 recorded. Unpinned names are recorded "unverified"."""
    if name not in WEIGHTS:
        raise unknown_name_error(name)
    w, file = WEIGHTS[name], Path(file)
    if not path_exists(file) or not file.is_file():
        raise CheckpointError(f"{short(str(file))}: no such file")
    check_file(file, w)
    digests = file_digests(file)
    path = cache_dir() / w.filename
    try:
        with atomic_write(path) as tmp:
            shutil.copyfile(file, tmp)
            if file_digests(tmp) != digests:  # changed while it was copied
                raise CheckpointError(f"{file}: changed while it was copied into the cache; nothing was kept")
        record_sha256(path, digests.sha256)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    return _provenance(w, path, digests, f"imported from {file.resolve()}")
