"""Errors that the toolkit raises for bad input.

Every message is one line that names the offending file or value and says what would be valid, e.g.
``mask 00000.png is 640x360 but the video is 854x480``. The command-line tools print ``error: <message>`` and
exit with status 2 on any :class:`SiamMAEError`, without a traceback.
"""


class SiamMAEError(Exception):
    """Base class of the errors a user can act on (bad input, missing optional extra)."""


class InputError(SiamMAEError, ValueError):
    """A file or value given by the user is missing, unreadable or malformed."""


class CheckpointError(InputError):
    """A checkpoint or weight file cannot be loaded."""


class VideoError(InputError):
    """A video or frame folder cannot be read (missing, corrupt, empty)."""


class OutputError(InputError):
    """An output cannot be written (a full disk, no permission, a planted link, a folder in use by another run)."""


class MissingExtraError(SiamMAEError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs {package}: pip install 'siammae[{extra}]'")
        self.package = package
        self.extra = extra


def cause(e: BaseException, path=None) -> str:
    """The reason of an OS / decoder error without the file name that the message already starts with:
    ``Invalid data found when processing input``, not ``[Errno 1094995529] ...: '/data/x.mp4'``."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if path is not None:
        for form in (f"'{path}'", f'"{path}"', str(path)):
            text = text.replace(form, "")
    if text.startswith("[Errno ") and "] " in text:  # FFmpeg's errors put their number first
        text = text.split("] ", 1)[1]
    text = text.strip().rstrip(":").strip()
    return text or type(e).__name__
