"""File output: nothing a user already has is ever left half-written, and nothing is written through a link.

Every output of the toolkit (checkpoints, masks, reports, engines) goes through :func:`atomic_write`: the data is
written to a temporary file in the destination folder and renamed over the destination only when complete.
A crash, a full disk or Ctrl-C leaves either the old file or the new one, never a torn one. The rename replaces a
symlink at the destination by the file (it never writes to the link's target), and the file gets the mode that
``open`` would give (0o666 less the umask), not the 0o600 of ``mkstemp``. Temporary names start with
:data:`TMP_PREFIX`, so the leftovers of a killed run are recognised (and removed by the next run's
:class:`siammae.outputs.OutputFolder`).

Append-only logs (``log.jsonl``, ``keypoints.jsonl``) open with :func:`open_append`, which refuses a symlink, and
are read back with :func:`read_jsonl`, which drops a torn last line (the one a kill -9 or a full disk can leave).
Every OSError on write becomes an :class:`OutputError` naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from siammae.errors import InputError, OutputError

TMP_PREFIX = ".siammae-tmp."


def umask() -> int:
    """The process's umask: from /proc (Linux), which does not change it; elsewhere set and restored at once
    (a thread creating a file in that instant would get mode 0o666, hence /proc first)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(path: str | os.PathLike, e: OSError) -> OutputError:
    """The one-line error for a failed write of ``path``: ``cannot write out/x.png: No space left on device``."""
    return OutputError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on failure removed.

    The temporary name keeps the destination's suffix so that writers which choose a format from the file name
    (PIL, PyAV, torch.save) behave as for the final name. An OSError while writing or renaming (a full disk, a
    read-only folder) is raised as an :class:`OutputError` that names ``path``.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.stem}.", suffix=f".tmp{path.suffix}", dir=folder)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise write_error(path, e) from e
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def open_append(path: str | os.PathLike, truncate: bool = False) -> TextIO:
    """Open a log for appending (``truncate``: start it empty), refusing to follow a symlink at ``path``.

    The mode of a new file follows the umask. Errors (a planted link, a full disk) are one-line OutputErrors.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if truncate:
        flags |= os.O_TRUNC
    if path.is_symlink():  # O_NOFOLLOW does the same where it exists; this names the cause everywhere
        raise OutputError(f"cannot write {path}: it is a symbolic link (siammae never writes through a link)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        raise write_error(path, e) from e
    return os.fdopen(fd, "a", encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines file; a torn or unparsable LAST line (a run killed mid-write) is dropped.

    A bad line before the last is corruption, not a torn write: an InputError naming the file and the line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    records = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if i == last:
                break  # the torn tail of an interrupted append
            raise InputError(f"{path}: line {i + 1} is not a JSON object ({e})") from e
        records.append(rec)
    return records
