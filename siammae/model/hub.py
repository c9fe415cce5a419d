"""Downloads into torch's cache, checked before they are kept: the file layer under :mod:`siammae.model.weights`.

Files go where ``torch.hub`` puts them, ``$TORCH_HOME/hub/checkpoints/<official file name>`` (``torch.hub.get_dir()``),
so weights that timm or ``torch.hub.load_state_dict_from_url`` already fetched are found, and a file placed there by
hand is used. A download streams into a temporary file in that folder, with a progress bar on stderr, and is renamed
to its final name only when it is complete AND has passed the caller's check (``validate``: for named weights, that
it loads with ``weights_only=True`` as a state dict of the expected architecture). A short body (fewer bytes than
``Content-Length``), an empty body, an HTML page, a body cut short without ``Content-Length`` (it does not load), a
server too slow to finish in time: each leaves nothing at the final path, and the next run starts again.

Integrity: the sha256 of each kept file is written beside it (``<file>.sha256``, the format of ``sha256sum``, so
``sha256sum -c`` checks it too) and compared on every later use: a file changed since is an error naming the file to
delete. A file is hashed once per process (:func:`file_digests` remembers it by device, inode, size and mtime).

No hangs: ``SIAMMAE_DOWNLOAD_TIMEOUT`` (seconds, default 1800) is the TOTAL time a download may take, connecting
included; a connection that sends nothing for 30 s (or for what is left of the total, if less) fails sooner.
Offline (``SIAMMAE_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) nothing is fetched. ``SIAMMAE_WEIGHTS_URL_BASE`` replaces the
``https://dl.fbaipublicfiles.com`` prefix of the official URLs (a mirror; the tests' local server).
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.io import atomic_write, write_text

OFFICIAL_BASE = "https://dl.fbaipublicfiles.com"
DEFAULT_TIMEOUT_S = 1800.0  # total: the 330 MB ViT-B files at 0.2 MB/s
STALL_TIMEOUT_S = 30.0  # no byte for this long: the connection is dead
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


# ------------------------------------------------------------------------------------------------------ hashing
@dataclass(frozen=True)
class Digests:
    """A file's sha256 (its identity in reports) and md5 (MAE publishes an md5 prefix of its files)."""

    sha256: str
    md5: str


_DIGESTS: dict[tuple, Digests] = {}  # (device, inode, size, mtime_ns) -> digests, for this process


def _hash_file(path: Path, chunk: int = 1 << 20) -> Digests:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return Digests(sha.hexdigest(), md5.hexdigest())


def file_digests(path: str | os.PathLike) -> Digests:
    """sha256 and md5 of a file, computed once per process: remembered by (device, inode, size, mtime_ns), so a
    batch that resolves the weights and then loads them reads the 87 MB once; a file written since is hashed again."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        found = _DIGESTS[key] = _hash_file(Path(path))
    return found


def _remember(path: Path, digests: Digests) -> None:
    """Digests computed while a file was written: the rename keeps its inode and mtime, so they stay valid."""
    st = os.stat(path)
    _DIGESTS[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = digests


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, for tracing results back to the exact weights (remembered, see :func:`file_digests`)."""
    return file_digests(path).sha256


# ----------------------------------------------------------------------------------------------------- download
def download_timeout() -> float:
    """``SIAMMAE_DOWNLOAD_TIMEOUT``: the total seconds a download may take, a finite positive number."""
    raw = os.environ.get("SIAMMAE_DOWNLOAD_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise CheckpointError(f"SIAMMAE_DOWNLOAD_TIMEOUT={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"SIAMMAE_DOWNLOAD_TIMEOUT={raw!r} must be a finite positive number of seconds")
    return value


def _set_read_timeout(response, seconds: float) -> None:
    """The socket timeout of the next read: urlopen's applies to every read, this shortens it to the deadline."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def download(
    url: str,
    dest: str | os.PathLike,
    progress: bool = True,
    validate: Callable[[Path, str], None] | None = None,
) -> Digests:
    """Fetch ``url`` to ``dest`` (temp file, checked, then renamed); return its digests.

    ``validate(tmp, url)`` checks the complete temporary file and raises a CheckpointError if it is not what was
    asked for; nothing is renamed then. Redirects are followed; an HTTP error, no network, the deadline
    (:func:`download_timeout`), a short or empty body is a :class:`CheckpointError` naming the URL and ``dest``,
    and nothing is left at ``dest``.
    """
    from tqdm import tqdm

    import siammae

    dest = Path(dest)
    total_s = download_timeout()
    deadline = time.monotonic() + total_s
    kept = f"nothing was kept at {dest}: run again to retry"
    by_hand = f"; or fetch it yourself and put it at {dest}"
    late = f"download of {url} did not finish within SIAMMAE_DOWNLOAD_TIMEOUT={total_s:g} s"
    request = urllib.request.Request(url, headers={"User-Agent": f"siammae/{siammae.__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=min(STALL_TIMEOUT_S, total_s))
    except urllib.error.HTTPError as e:
        e.close()
        if 300 <= e.code < 400:  # urllib gives up on a loop or after 10 redirects; its reason is three lines
            raise CheckpointError(f"cannot download {url}: redirect loop or too many redirects{by_hand}") from None
        reason = (str(e.reason).splitlines() or [""])[0]
        raise CheckpointError(f"cannot download {url}: HTTP {e.code} {reason}{by_hand}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # no network, DNS, refused, timeout
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {url} ({reason}){by_hand}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        kind = response.headers.get("Content-Type", "")
        if kind.startswith("text/html"):
            raise CheckpointError(
                f"cannot download {url}: the server sent an HTML page (Content-Type {kind}), not the weights "
                f"(a proxy's or a login page?); {kept}{by_hand}"
            )
        digests, got = (hashlib.sha256(), hashlib.md5(usedforsecurity=False)), 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {dest.name}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        try:
            with bar, atomic_write(dest) as tmp:
                with open(tmp, "wb") as f:
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise CheckpointError(f"{late} (got {got} bytes); {kept}{by_hand}")
                        _set_read_timeout(response, min(STALL_TIMEOUT_S, left))
                        try:
                            block = response.read1(1 << 20)  # what has arrived: a trickle cannot outlast the deadline
                        except (OSError, http.client.HTTPException) as e:  # a timeout or a dropped connection
                            if time.monotonic() >= deadline:
                                raise CheckpointError(f"{late} (got {got} bytes); {kept}{by_hand}") from None
                            raise CheckpointError(
                                f"download of {url} failed after {got} bytes ({type(e).__name__}: {e}); {kept}{by_hand}"
                            ) from None
                        if not block:
                            break
                        f.write(block)
                        for h in digests:
                            h.update(block)
                        got += len(block)
                        bar.update(len(block))
                if total is not None and got != total:
                    raise CheckpointError(f"download of {url} stopped after {got} of {total} bytes; {kept}{by_hand}")
                if got == 0:
                    raise CheckpointError(f"download of {url} sent an empty body; {kept}{by_hand}")
                _remember(tmp, Digests(digests[0].hexdigest(), digests[1].hexdigest()))  # hashed while streaming
                if validate is not None:
                    try:
                        validate(tmp, url)
                    except CheckpointError as e:
                        raise CheckpointError(f"downloaded {e}; {kept}{by_hand}") from None
        except CheckpointError:
            raise
        except OSError as e:  # the cache folder is not writable, the disk is full
            raise CheckpointError(f"cannot write {dest}: {e.strerror or e}") from None
    return Digests(digests[0].hexdigest(), digests[1].hexdigest())


# --------------------------------------------------------------------------------------------- sha256 records
def sidecar(path: Path) -> Path:
    """``<file>.sha256``: the sha256 recorded when the file entered the cache."""
    return path.with_name(path.name + ".sha256")


def delete_hint(path: Path) -> str:
    """What to delete to start again with a cached file: the file and its record, if it has one."""
    record = f" and {sidecar(path).name}" if sidecar(path).exists() else ""
    return f"delete {path}{record} to fetch it again"


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded beside ``path``, or None if none was."""
    side = sidecar(path)
    if not side.exists():
        return None
    words = side.read_text(errors="replace").split()
    if not words or len(words[0]) != 64 or any(c not in "0123456789abcdefABCDEF" for c in words[0]):
        raise CheckpointError(
            f"{side}: not a sha256 record (expected '<64 hex digits>  {path.name}'); {delete_hint(path)}"
        )
    return words[0].lower()


def record_sha256(path: Path, sha: str) -> None:
    """Write ``<file>.sha256`` (atomically) in the ``sha256sum`` format."""
    write_text(sidecar(path), f"{sha}  {path.name}\n")


def check_recorded(path: Path, sha: str) -> bool:
    """Whether ``path`` has a record; a record that differs from ``sha`` is an error naming what to delete."""
    recorded = recorded_sha256(path)
    if recorded is not None and sha != recorded:
        raise CheckpointError(
            f"{path}: sha256 {sha[:16]}... differs from {recorded[:16]}... recorded when it entered the cache: the "
            f"file changed since; {delete_hint(path)}"
        )
    return recorded is not None
