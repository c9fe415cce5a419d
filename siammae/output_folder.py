"""Whether an output is free, and one run's claim on its output folder: one writer at a time, no planted links, no
stale outputs, no leftovers.

"May this be written?" is answered here only, with one error class (:class:`~siammae.errors.OutputError`):
:func:`check_file_free` for an output file (an export's ``.onnx``, a run's report, overlay, JSON Lines) and
:func:`check_folder_free` for an output folder, asked by every command before anything loads and again by the
claim. ``--out`` that is itself a symbolic link is refused (``--out runs`` where ``runs -> /data/runs``: give the
real folder), so that a run never writes into, nor leaves its lock in, a folder it was not named; links in the
parents of the path are the system's business and are followed.

Every command that writes a folder (``siammae-track --out``, ``siammae-eval --out``, ``siammae-train --out``,
``siammae-attn`` into a folder) opens it with :class:`OutputFolder`, before its first frame:

- **one writer**: a lock file ``.siammae.lock`` holding the owner's pid, locked with ``flock``. A second run into
  the same folder (another process, or another call in this one) stops with an error naming that pid. The kernel
  drops the lock when its owner dies, so the lock file of a killed run is simply taken over.
- **no links**: a symbolic link anywhere inside the folder is refused (siammae never writes through a link it did
  not create); with ``overwrite`` a link named like one of the run's outputs is removed (its target is untouched).
- **leftovers**: temporary files of a killed run (:data:`siammae.io.TMP_PREFIX`) are removed.
- **replace means replace**: with ``exclusive`` (a folder holding this run's outputs only, as ``siammae-track``'s
  masks), a non-empty folder is an error without ``overwrite``; with it, the files this tool writes there (the
  ``owned`` name patterns) are removed first, and any other file is an error naming it: siammae never deletes a
  file it would not have written.

The lock file is removed when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from siammae.errors import OutputError
from siammae.io import TMP_PREFIX, write_error

try:
    import fcntl
except ImportError:  # Windows: no flock; the pid file alone documents the owner
    fcntl = None

LOCK_NAME = ".siammae.lock"


# ---------------------------------------------------------------------------------------------- free or not
def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_file_free(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a Path when an output file may be written there: not a folder, and free unless ``overwrite``
    (the atomic write then replaces it; a link there is replaced, never followed). An OutputError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, expected an output file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path}: output file exists (use --overwrite to replace it)")
    return path


def check_folder_free(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    exclusive: bool = True,
    owned: tuple[str, ...] = (),
    what: str = "--out",
) -> list[Path]:
    """Whether a run may write the folder ``path``, asked before anything is written: not a symbolic link, not a
    file, and with ``exclusive`` (a folder of this run's outputs only) empty, or with ``overwrite`` holding only
    files whose names match ``owned``. Returns the entries ``overwrite`` replaces; an OutputError names the
    problem. A folder that does not exist yet is free."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(
            f"{what} {path}: is a symbolic link (to {os.readlink(path)}); siammae writes only into the folder it "
            f"is given: give the real folder ({path.resolve()})"
        )
    if not path.exists():
        return []
    if not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a folder")
    if not exclusive:
        return []
    entries = sorted(e for e in path.iterdir() if e.name != LOCK_NAME)
    mine = [any(fnmatch.fnmatch(e.name, p) for p in owned) for e in entries]
    links = [e for e, ours in zip(entries, mine, strict=True) if e.is_symlink() and not (overwrite and ours)]
    if links:  # a link named like an output goes with --overwrite (its target stays); any other is refused
        raise OutputError(
            f"{links[0]}: is a symbolic link inside {what} {path}; siammae never writes through a link it did not "
            "create: remove it or choose another folder"
        )
    if entries and not overwrite:
        raise OutputError(f"{what} {path}: output folder is not empty (use --overwrite to replace its files)")
    foreign = [e.name for e, ours in zip(entries, mine, strict=True) if not ours or (e.is_dir() and not e.is_symlink())]
    if foreign:
        raise OutputError(
            f"{what} {path}: holds {_shown(foreign)}, which this command does not write; --overwrite only "
            "replaces its own outputs: move them away or choose another folder"
        )
    return entries


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


class OutputFolder:
    """A claim on ``path`` for one run; use as a context manager (or :meth:`open` / :meth:`close`).

    overwrite: the user allows replacing earlier outputs. exclusive: the folder must hold this run's outputs only.
    owned: glob patterns of the file names this run writes at the top of the folder (removed by ``overwrite``).
    what: how the user named the folder in errors (``--out``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        exclusive: bool = False,
        owned: tuple[str, ...] = (),
        what: str = "--out",
    ):
        self.path = Path(path)
        self.overwrite, self.exclusive, self.owned, self.what = overwrite, exclusive, tuple(owned), what
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> OutputFolder:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, check: Callable[[], None] | None = None) -> OutputFolder:
        """Create and lock the folder, then tidy it (leftovers, links, earlier outputs); errors before any write.
        ``check``: more checks to run once the folder is held (the claim is released when they fail)."""
        p = self.path
        check_folder_free(p, exclusive=False, what=self.what)  # not a link, not a file: before anything is made
        self._created = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(p, e) from e
        self._lock()
        try:
            self._tidy()
            if check is not None:
                check()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock (idempotent); remove the folder if this run created it and left it empty."""
        if self._fd is None:
            return
        lock = self.path / LOCK_NAME
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(lock, follow_symlinks=False)):
                lock.unlink()
        except OSError:
            pass  # the folder went away: nothing to release but the descriptor
        os.close(self._fd)
        self._fd = None
        if self._created:  # a run that stopped before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # ------------------------------------------------------------------------------------------------- lock
    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):  # retried only when another run removed the lock file between our open and lock
            if lock.is_symlink():
                lock.unlink()  # not ours to follow: the link goes, its target stays
            try:
                fd = os.open(lock, flags, 0o644)
            except OSError as e:
                raise write_error(lock, e) from e
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise OutputError(
                        f"{self.what} {self.path}: another siammae run (pid {_read_pid(lock)}) is writing into this "
                        f"folder ({lock}); wait for it to finish or choose another folder"
                    ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise OutputError(f"{self.what} {self.path}: cannot take the lock {lock} (it keeps changing)")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise write_error(lock, e) from e
        self._fd = fd

    # ------------------------------------------------------------------------------------------------ tidy
    def _is_owned(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) for pat in self.owned)

    def _tidy(self) -> None:
        links, leftovers = self._scan()
        try:
            for path in leftovers:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            for link in links:
                self._remove_link(link)
            if self.exclusive:
                self._empty()
        except OSError as e:  # an OutputError is no OSError: it passes through
            raise write_error(getattr(e, "filename", None) or self.path, e) from e

    def _scan(self) -> tuple[list[Path], list[Path]]:
        """The symbolic links and the temporary leftovers (``TMP_PREFIX``) anywhere under the folder."""
        links, leftovers = [], []
        for folder, dirs, files in os.walk(self.path):  # followlinks=False: a linked folder is listed, not entered
            for name in dirs + files:
                full = Path(folder) / name
                if full.is_symlink():
                    links.append(full)
                elif name.startswith(TMP_PREFIX):
                    leftovers.append(full)
        return links, leftovers

    def _remove_link(self, link: Path) -> None:
        """Unlink ``link`` when it is one of our own outputs at the top and ``overwrite`` is on; refuse it otherwise."""
        if not (self.overwrite and link.parent == self.path and self._is_owned(link.name)):
            raise OutputError(
                f"{link}: is a symbolic link inside {self.what} {self.path}; siammae never writes through a "
                "link it did not create: remove it or choose another folder"
            )
        link.unlink()

    def _empty(self) -> None:
        for e in check_folder_free(self.path, self.overwrite, owned=self.owned, what=self.what):
            e.unlink()


def check_name(name: str, where: str) -> str:
    """``name`` (a sequence or frame name from a list file, a manifest or a folder) when it is a plain file name;
    an OutputError naming ``where`` otherwise. Names are data, never paths: they may not be empty, absolute, ``.`` /
    ``..``, or hold a path separator or a NUL, so that joining one to an output folder stays inside it."""
    bad = (
        not name
        or name in (".", "..")
        or "\0" in name
        or "/" in name
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or Path(name).is_absolute()
    )
    if bad:
        raise OutputError(f"{where}: {name!r} is not a plain name (no '/', '..', NUL or absolute path)")
    return name
