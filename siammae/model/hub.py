"""Files from the network, through the libraries made for it, checked before they are kept.

Official files are fetched by ``torch.hub.download_url_to_file`` (with ``hash_prefix`` where a sha256 is published)
into torch's cache, ``$TORCH_HOME/hub/checkpoints/<official file name>``, where timm and
``torch.hub.load_state_dict_from_url`` look too; ``hf:`` and ``timm:`` names by ``huggingface_hub.hf_hub_download``
into the Hugging Face cache. What siammae adds is what they do not do:

- a file is moved to its final name only once it is complete AND passed the caller's check (for named weights: it
  loads with ``weights_only=True`` as a state dict of the expected architecture, every tensor finite); a torn, empty
  or HTML body leaves nothing in the cache, and the next run starts again;
- its sha256 is recorded beside it (``<file>.sha256``, the ``sha256sum`` format) and compared on every later use;
- no waiting on a machine without network: one connection attempt of ``CONNECT_TIMEOUT_S`` to the host (or its
  proxy) first, no retry loop; ``SIAMMAE_OFFLINE=1`` / ``HF_HUB_OFFLINE=1`` asks nothing of the network at all;
- ``SIAMMAE_DOWNLOAD_TIMEOUT`` (seconds, default 1800) bounds a whole download, a trickle included;
- every failure is one line naming the URL, the file, and ``siammae-weights import`` (the caller's ``hint``).

``SIAMMAE_WEIGHTS_URL_BASE`` replaces the ``https://dl.fbaipublicfiles.com`` prefix of the official URLs (a mirror).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siammae.errors import CheckpointError
from siammae.io import TMP_PREFIX, write_text

OFFICIAL_BASE = "https://dl.fbaipublicfiles.com"
DEFAULT_TIMEOUT_S = 1800.0  # total: the 330 MB ViT-B files at 0.2 MB/s
CONNECT_TIMEOUT_S = 5.0  # one attempt to reach the host: offline fails in seconds, not after retries
STALL_TIMEOUT_S = 30.0  # no byte for this long: the connection is dead


def offline_variable() -> str | None:
    """The environment variable that turns downloads off (``SIAMMAE_OFFLINE`` or ``HF_HUB_OFFLINE``), or None."""
    on = ("1", "true", "yes", "on")
    return next((v for v in ("SIAMMAE_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").lower() in on), None)


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
_PENDING: dict[tuple, threading.Thread] = {}  # the same keys -> the thread hashing that file now (prefetch_digests)


def _hash_file(path: Path, chunk: int = 1 << 20) -> Digests:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
            md5.update(block)
    return Digests(sha.hexdigest(), md5.hexdigest())


def _file_key(path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def file_digests(path: str | os.PathLike) -> Digests:
    """sha256 and md5 of a file, computed once per process: remembered by (device, inode, size, mtime_ns), which a
    rename keeps, so a download checked under its temporary name and then loaded is read once. A file that
    :func:`prefetch_digests` is hashing is waited for, not hashed again."""
    key = _file_key(path)
    pending = _PENDING.pop(key, None)
    if pending is not None:
        pending.join()
    if key not in _DIGESTS:  # not prefetched, or its thread failed (the error is raised here, in the caller)
        _DIGESTS[key] = _hash_file(Path(path))
    return _DIGESTS[key]


def prefetch_digests(path: str | os.PathLike) -> None:
    """Start hashing a weights file in a background thread, so that :func:`file_digests` later finds it done.

    Commands call it when they check their options, before torch is imported: hashlib and file reads release the
    GIL, so the hash (0.17 s for a ViT-S/16 on a 2-core CPU, 0.7 s for a ViT-B) overlaps the import instead of
    adding to the start-up. Silent on any error: the later :func:`file_digests` hashes again and raises it."""
    try:
        key = _file_key(path)
    except OSError:
        return
    if key in _DIGESTS or key in _PENDING:
        return

    def work():
        with contextlib.suppress(OSError):
            _DIGESTS[key] = _hash_file(Path(path))

    thread = threading.Thread(target=work, name="siammae-hash", daemon=True)
    _PENDING[key] = thread
    thread.start()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, for tracing results back to the exact weights (remembered, see :func:`file_digests`)."""
    return file_digests(path).sha256


# ------------------------------------------------------------------------------------------------- sha256 records
def sidecar(path: Path) -> Path:
    """``<file>.sha256``: the sha256 recorded when the file entered the cache."""
    return path.with_name(path.name + ".sha256")


def delete_hint(path: Path) -> str:
    """What to delete to start again with a cached file: the file and its record, if it has one."""
    record = f" and {sidecar(path).name}" if sidecar(path).exists() else ""
    return f"delete {path}{record} to fetch it again"


def record_sha256(path: Path, sha: str) -> None:
    """Write ``<file>.sha256`` (atomically) in the ``sha256sum`` format."""
    write_text(sidecar(path), f"{sha}  {path.name}\n")


def check_recorded(path: Path, sha: str) -> bool:
    """Whether ``path`` has a record; a record that differs from ``sha`` (or is no sha256) is an error."""
    if not sidecar(path).exists():
        return False
    words = sidecar(path).read_text(errors="replace").split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise CheckpointError(f"{sidecar(path)}: not a sha256 record ('<64 hex digits>  {path.name}')")
    if words[0].lower() != sha:
        raise CheckpointError(
            f"{path}: sha256 {sha[:16]}... differs from {words[0][:16]}... recorded when it entered the cache: the "
            f"file changed since"
        )
    return True


# ------------------------------------------------------------------------------------------------------ network
def download_timeout() -> float:
    """``SIAMMAE_DOWNLOAD_TIMEOUT``: the total seconds a download may take, a finite positive number."""
    raw = os.environ.get("SIAMMAE_DOWNLOAD_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"SIAMMAE_DOWNLOAD_TIMEOUT={raw!r} must be a finite positive number of seconds")
    return value


def check_reachable(url: str, hint: str) -> None:
    """One TCP connection to ``url``'s host (or the proxy that urllib would use), ``CONNECT_TIMEOUT_S`` at most:
    without network this fails in seconds, where the libraries would wait and retry."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise CheckpointError(
            f"cannot download {url}: no connection to {parts.hostname}:{port} ({why}){hint}"
        ) from None


def _reason(url: str, e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        if 300 <= e.code < 400:  # urllib gives up on a loop or after 10 redirects
            return f"cannot download {url}: redirect loop or too many redirects"
        return f"cannot download {url}: HTTP {e.code} {(str(e.reason).splitlines() or [''])[0]}"
    reason = getattr(e, "reason", None) or e
    return f"cannot download {url} ({type(e).__name__}: {str(reason).splitlines()[0] if str(reason) else ''})"


def _fetch_within(url: str, part: Path, hash_prefix: str | None, progress: bool, total: float) -> str | None:
    """``torch.hub.download_url_to_file`` in a thread, so that a trickle cannot outlast ``total`` seconds (the
    library has no deadline); None when it finished in time, else why not. An abandoned thread's file goes with the
    caller's temporary folder, and its final rename then fails."""
    import torch.hub

    failed = []

    def fetch():
        socket.setdefaulttimeout(STALL_TIMEOUT_S)  # the library's urlopen takes no timeout: a dead link ends
        try:
            torch.hub.download_url_to_file(url, str(part), hash_prefix, progress)
        except BaseException as e:  # reported by the caller's thread
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # its response holds the socket
            failed.append(e)
        finally:
            socket.setdefaulttimeout(None)

    worker = threading.Thread(target=fetch, name="siammae-download", daemon=True)
    worker.start()
    worker.join(total)
    if worker.is_alive():
        return f"download of {url} did not finish within SIAMMAE_DOWNLOAD_TIMEOUT={total:g} s"
    return _reason(url, failed[0]) if failed else None


def download(
    url: str,
    dest: str | os.PathLike,
    progress: bool = True,
    validate: Callable[[Path, str], None] | None = None,
    hash_prefix: str | None = None,
    hint: str = "",
) -> Digests:
    """Fetch ``url`` to ``dest`` with ``torch.hub.download_url_to_file``, in a private folder beside ``dest``; the
    file is renamed to ``dest`` only when complete, non-empty, within :func:`download_timeout`, and accepted by
    ``validate(tmp, url)`` (which raises a CheckpointError otherwise). Every failure is one CheckpointError naming
    the URL and ``dest``, ending with ``hint``; nothing is left behind. Returns the file's digests."""
    dest, total = Path(dest), download_timeout()
    kept = f"; nothing was kept at {dest}: run again to retry{hint}"
    check_reachable(url, hint)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=dest.parent))
    except OSError as e:  # the cache folder is not writable
        raise CheckpointError(f"cannot write {dest}: {e.strerror or e}{hint}") from None
    part = folder / dest.name
    try:
        if progress:
            print(f"downloading {dest.name} from {url}", file=sys.stderr)
        if (failure := _fetch_within(url, part, hash_prefix, progress, total)) is not None:
            raise CheckpointError(failure + kept)
        if part.stat().st_size == 0:
            raise CheckpointError(f"download of {url} sent an empty body{kept}")
        if validate is not None:
            try:
                validate(part, url)
            except CheckpointError as e:
                raise CheckpointError(f"downloaded {e}{kept}") from None
        digests = file_digests(part)
        os.replace(part, dest)
    except OSError as e:  # the disk is full
        raise CheckpointError(f"cannot write {dest}: {e.strerror or e}{hint}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return digests


def hf_file(repo: str, filename: str, revision: str | None = None, hint: str = "") -> Path:
    """``repo``'s ``filename`` through ``huggingface_hub`` (its cache, HF_HOME / HF_HUB_CACHE / HF_ENDPOINT
    respected): the cached file without asking the network; else, unless offline, one quick connection attempt
    (:func:`check_reachable`) and then ``hf_hub_download``. Its sha256 is checked against its blob name (the hub
    names LFS blobs by their sha256)."""
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    url = hf_hub_url(repo, filename, revision=revision)
    try:
        file = Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        where = f"not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        if (var := offline_variable()) is not None:
            raise CheckpointError(f"{where} and downloads are off ({var}=1): fetch {url} with network{hint}") from None
        check_reachable(url, hint)
        try:
            file = Path(hf_hub_download(repo, filename, revision=revision))
        except (OSError, ValueError) as e:  # hub errors are OSErrors
            raise CheckpointError(f"cannot download {url} ({(str(e).splitlines() or [''])[0]}){hint}") from None
    sha, blob = file_sha256(file), file.resolve().name
    if re.fullmatch(r"[0-9a-f]{64}", blob) and blob != sha:
        raise CheckpointError(f"{file}: sha256 {sha[:16]}... differs from its blob name {blob[:16]}...: it changed")
    return file
