"""Downloads into torch's cache, once, checked: the file layer under :mod:`siammae.model.weights`.

Files go where ``torch.hub`` puts them, ``$TORCH_HOME/hub/checkpoints/<official file name>`` (``torch.hub.get_dir()``),
so weights that timm or ``torch.hub.load_state_dict_from_url`` already fetched are found, and a file placed there by
hand is used. A download streams into a temporary file in that folder, with a progress bar on stderr, and is renamed
to its final name only when complete: an interrupted or short download (fewer bytes than ``Content-Length``) leaves
nothing at the final path, and the next run starts again.

Integrity: the sha256 of each file is written beside it at its first download (``<file>.sha256``, the format of
``sha256sum``, so ``sha256sum -c`` checks it too) and compared on every later use: a file changed since is an error
naming it, never silently used. A file placed by hand has its sha256 recorded on first use.

No hangs: connecting and every read time out after ``SIAMMAE_DOWNLOAD_TIMEOUT`` seconds (default 30). Offline
(``SIAMMAE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) nothing is fetched: a file not in the cache is an error naming the
URL and the exact path to put it at. ``SIAMMAE_WEIGHTS_URL_BASE`` replaces the ``https://dl.fbaipublicfiles.com``
prefix of the official URLs (a mirror; the tests' local server).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.io import atomic_write, write_text

OFFICIAL_BASE = "https://dl.fbaipublicfiles.com"
_TRUE = ("1", "true", "yes", "on")


def offline_variable() -> str | None:
    """The environment variable that turns downloads off (``SIAMMAE_OFFLINE`` or ``HF_HUB_OFFLINE``), or None."""
    for var in ("SIAMMAE_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def url_base() -> str:
    """Where the official files are fetched from: ``SIAMMAE_WEIGHTS_URL_BASE`` or the official host."""
    return os.environ.get("SIAMMAE_WEIGHTS_URL_BASE", OFFICIAL_BASE).rstrip("/")


def cache_dir() -> Path:
    """torch's checkpoint cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, for tracing results back to the exact weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _timeout() -> float:
    raw = os.environ.get("SIAMMAE_DOWNLOAD_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        raise CheckpointError(f"SIAMMAE_DOWNLOAD_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise CheckpointError(f"SIAMMAE_DOWNLOAD_TIMEOUT={raw!r} must be positive")
    return value


def download(url: str, dest: str | os.PathLike, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest`` (temp file + rename when complete); return its sha256.

    Redirects are followed; an HTTP error, no network, a timeout or a short body is a :class:`CheckpointError`
    naming the URL and ``dest``, and nothing is left at ``dest``.
    """
    from tqdm import tqdm

    import siammae

    dest = Path(dest)
    by_hand = f"; or fetch it yourself and put it at {dest}"
    request = urllib.request.Request(url, headers={"User-Agent": f"siammae/{siammae.__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=_timeout())  # also the timeout of every read
    except urllib.error.HTTPError as e:
        raise CheckpointError(f"cannot download {url}: HTTP {e.code} {e.reason}{by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # no network, DNS, refused, timeout
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {url} ({reason}){by_hand}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        h, got = hashlib.sha256(), 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {dest.name}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        try:
            with bar, atomic_write(dest) as tmp, open(tmp, "wb") as f:
                try:
                    while block := response.read(1 << 20):
                        f.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException) as e:  # a timeout or a dropped connection mid-file
                    raise CheckpointError(
                        f"download of {url} failed after {got} bytes ({type(e).__name__}: {e}); nothing was kept at "
                        f"{dest}: run again to retry{by_hand}"
                    ) from None
                if total is not None and got != total:
                    raise CheckpointError(
                        f"download of {url} stopped after {got} of {total} bytes; nothing was kept at {dest}: "
                        f"run again to retry{by_hand}"
                    )
        except CheckpointError:
            raise
        except OSError as e:  # the cache folder is not writable, the disk is full
            raise CheckpointError(f"cannot write {dest}: {e.strerror or e}") from None
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha256(path: Path) -> str | None:
    side = _sidecar(path)
    if not side.exists():
        return None
    words = side.read_text().split()
    if not words or len(words[0]) != 64:
        raise CheckpointError(f"{side}: not a sha256 record (expected '<64 hex digits>  {path.name}'); delete it")
    return words[0].lower()


def _record_sha256(path: Path, sha: str) -> None:
    write_text(_sidecar(path), f"{sha}  {path.name}\n")


def verify_cached(path: Path) -> str:
    """sha256 of a cached file, checked against the one recorded at its download (recorded now if none was)."""
    sha = file_sha256(path)
    recorded = _recorded_sha256(path)
    if recorded is None:
        _record_sha256(path, sha)  # a file placed by hand: trusted on first use, checked from now on
    elif sha != recorded:
        raise CheckpointError(
            f"{path}: sha256 {sha[:16]}... differs from {recorded[:16]}... recorded when it was downloaded: the file "
            f"changed since; delete it and {_sidecar(path).name} to download it again"
        )
    return sha


def cached_download(url: str, filename: str, what: str, progress: bool = True) -> tuple[Path, str]:
    """(path, sha256) of ``filename`` in the cache, downloading it from ``url`` first if it is not there.

    ``what`` names the weights in messages. Offline, a file not in the cache is an error naming ``url`` and the path.
    """
    path = cache_dir() / filename
    if path.is_file():
        return path, verify_cached(path)
    var = offline_variable()
    if var is not None:
        raise CheckpointError(
            f"{what} is not in the cache and downloads are off ({var}=1): fetch {url} and put it at {path}"
        )
    sha = download(url, path, progress)
    _record_sha256(path, sha)
    return path, sha
