"""File output: nothing a user already has is ever left half-written, and nothing is written through a link.

Every output of the toolkit (checkpoints, masks, reports, engines) goes through :func:`atomic_write`: the data is
written to a temporary file in the destination folder and renamed over the destination only when complete.
A crash, a full disk or Ctrl-C leaves either the old file or the new one, never a torn one. The rename replaces a
symlink at the destination by the file (it never writes to the link's target), and the file gets the mode that
``open`` would give (0o666 less the umask), not the 0o600 of ``mkstemp``. Temporary names start with
:data:`TMP_PREFIX`, so the leftovers of a killed run are recognised (and removed by the next run's
:class:`siammae.output_folder.OutputFolder`).

Append-only logs (``log.jsonl``, ``keypoints.jsonl``) open with :func:`open_append`, which refuses a symlink, and
are read back with :func:`read_jsonl`, which drops a torn last line (the one a kill -9 or a full disk can leave).
Every OSError on write becomes an :class:`OutputError` naming the file and the cause.

Every JSON file the toolkit reads goes through :func:`read_json` / :func:`parse_json`: text that is not JSON, nests
deeper than :data:`MAX_JSON_DEPTH` (100,000 ``[`` would otherwise be a RecursionError), or whose top level or named
keys are not of the expected type is one :class:`InputError` naming the file, never a traceback later.
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
# no file the toolkit reads nests more than a few levels; this bound keeps a hostile one from exhausting the stack
MAX_JSON_DEPTH = 32
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a whole number", float: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip


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


class _WholeWrites:
    """A binary writer on a file descriptor whose ``write`` writes every byte or raises: a short write (the last
    bytes that fit on a full disk) is retried, so the next one raises ENOSPC. Writers that ignore a short count
    (torch.save) would otherwise fail later with a message of their own (``unexpected pos``)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error: OSError | None = None  # the first failed write (a writer may hide it behind an error of its own)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.error = self.error or e
            raise
        return len(data)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike) -> Iterator[_WholeWrites]:
    """:func:`atomic_write` for a writer that takes a file object (``torch.save(obj, f)``): yields a binary writer
    whose failed write is an OSError, so a full disk is an :class:`OutputError` naming ``path`` (also when the
    writer, as torch.save does, raises an error of its own after the failed write: ``unexpected pos``)."""
    with atomic_write(path) as tmp:
        writer = _WholeWrites(os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)))
        try:
            yield writer
        except Exception as e:
            if writer.error is not None and e is not writer.error:
                raise writer.error from e
            raise
        finally:
            os.close(writer.fd)


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
            rec = parse_json(line, f"line {i + 1}")
        except ValueError as e:
            if i == last:
                break  # the torn tail of an interrupted append
            raise InputError(f"{path}: line {i + 1} is not a JSON object ({e})") from e
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------------------ JSON
def _type_words(kinds: tuple) -> str:
    return " or ".join(_JSON_TYPES.get(k, k.__name__) for k in kinds)


def _json_type_ok(value, kinds: tuple) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to a JSON schema
        return False
    return isinstance(value, kinds)


def _depth_ok(value) -> bool:
    """Whether ``value`` nests at most :data:`MAX_JSON_DEPTH` containers (iterative: no recursion of its own)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return False
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def parse_json(text: str | bytes, source, expect: type | tuple = dict, keys: dict | None = None):
    """``text`` parsed as JSON, checked: an :class:`InputError` starting with ``source`` (the file or URL) when it is
    not JSON, nests deeper than :data:`MAX_JSON_DEPTH`, its top level is not of type ``expect`` or, for an object,
    one of ``keys`` (name -> type or tuple of types) is missing or of another type. ``expect=object``: any value."""
    expect = expect if isinstance(expect, tuple) else (expect,)
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError of bytes
        raise InputError(f"{source}: not readable JSON ({e})") from None
    if isinstance(value, (dict, list)) and not _depth_ok(value):
        raise InputError(f"{source}: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    if not _json_type_ok(value, expect):
        raise InputError(f"{source}: expected {_type_words(expect)} at the top, found {_type_words((type(value),))}")
    for name, kinds in (keys or {}).items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if name not in value:
            raise InputError(f"{source}: has no {name!r} entry")
        if not _json_type_ok(value[name], kinds):
            raise InputError(
                f"{source}: {name!r} must be {_type_words(kinds)}, found {_type_words((type(value[name]),))}"
            )
    return value


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The UTF-8 text of the file ``path``; a missing or unreadable file, or bytes that are not UTF-8
    (``\\xff\\xfe``: a UTF-16 file), are an :class:`InputError` naming it (``what``: how errors name the file)."""
    source = f"{what} {path}".strip()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except OSError as e:
        raise InputError(f"cannot read {source}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def read_json(path: str | os.PathLike, expect: type | tuple = dict, keys: dict | None = None, what: str = ""):
    """The JSON file ``path`` read (:func:`read_text`) and checked as :func:`parse_json` does (``what``: how errors
    name the file, e.g. ``keypoint file``)."""
    return parse_json(read_text(path, what), f"{what} {path}".strip(), expect, keys)
