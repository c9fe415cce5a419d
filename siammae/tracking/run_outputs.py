"""Where one tracking run writes (:class:`RunOutputs`), the folder it writes to when none is given, and the one
check of its output files. No torch: :class:`~siammae.tracking.job.TrackJob` runs :meth:`RunOutputs.check_free`
before the model loads, and :func:`~siammae.tracking.run.claim_outputs` runs the same check again under the lock on
``--out``, this time also making the folders and proving they can be written.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from siammae.data.video import check_video_output
from siammae.errors import OutputError
from siammae.io import TMP_PREFIX
from siammae.output_folder import check_file_free, check_folder_free
from siammae.tracking.report import report_paths

# the files a run writes at the top of --out: what --overwrite may remove there (see siammae.output_folder)
OWNED_OUTPUTS = ("*.png", "keypoints.json", "keypoints.jsonl")


def default_out(video, keypoints: bool = False) -> Path:
    """Where one video's outputs go when none is given (``siammae-track video.mp4 --mask first.png``):
    ``<video name>_masks/`` (``_track/`` for keypoints) in the current folder; ``stdin_masks/`` for standard input
    (``-``: a folder named ``-_masks`` would read as an option to ``ls`` and ``rm``)."""
    name = "stdin" if str(video) == "-" else Path(str(video)).stem or "video"
    return Path(f"{name}_{'track' if keypoints else 'masks'}")


@dataclass(frozen=True)
class RunOutputs:
    """Where one run writes: ``out`` (a folder: one PNG per frame, or the keypoint track), ``overlay`` (a video),
    ``report`` (JSON, with its Markdown twin), ``jsonl`` (one line per frame, masks only). None: not written."""

    out: Path | None = None
    overlay: Path | None = None
    report: Path | None = None
    jsonl: Path | None = None

    @classmethod
    def of(cls, out=None, overlay=None, report=None, jsonl=None) -> RunOutputs:
        path = lambda p: None if p is None else Path(p)  # noqa: E731
        return cls(path(out), path(overlay), path(report), path(jsonl))

    def any(self) -> bool:
        return any(p is not None for p in (self.out, self.overlay, self.report, self.jsonl))

    def or_default(self, video, keypoints: bool = False) -> RunOutputs:
        """These outputs, or :func:`default_out` of ``video`` when none is given."""
        from siammae.data.live import LiveSource
        from siammae.data.video import VideoSource

        path = video.path if isinstance(video, (VideoSource, LiveSource)) else video
        return self if self.any() else RunOutputs(out=default_out(path, keypoints))

    def files(self) -> list[Path]:
        """The single files of the run (overlay, report pair, JSON Lines)."""
        return [p for p in (self.overlay, *report_paths(self.report), self.jsonl) if p is not None]

    def inside_out(self) -> tuple[str, ...]:
        """Names of the single files that sit at the top of ``out`` (``--overwrite`` replaces them there too)."""
        if self.out is None:
            return ()
        return tuple(p.name for p in self.files() if p.absolute().parent == self.out.absolute())

    def owned(self) -> tuple[str, ...]:
        """The names ``--overwrite`` may replace at the top of ``out``: the masks or keypoints, and the single
        files that sit there."""
        return OWNED_OUTPUTS + self.inside_out()

    def as_report(self) -> dict:
        """As the report lists them (``jsonl`` only when written)."""
        d = {k: (None if v is None else str(v)) for k, v in dataclasses.asdict(self).items()}
        if self.jsonl is None:
            del d["jsonl"]
        return d

    def check_free(self, overwrite: bool) -> None:
        """Before the model loads, writing nothing: an overlay format that can be written, ``out`` a folder that is
        empty or ``overwrite`` (the run claims it later), and free output files (:func:`check_output_files`)."""
        if self.overlay is not None:
            check_video_output(self.overlay, "--overlay")
        if self.out is not None:  # the folder first, as the run claims it first
            check_folder_free(self.out, overwrite, owned=self.owned())
        inside = set(self.inside_out())  # replaced with --out's files: the folder check above decides for them
        check_output_files([p for p in self.files() if p.name not in inside], overwrite, probe=False)


def check_output_files(paths: list[Path], overwrite: bool, probe: bool = True) -> None:
    """Each path names a file (not a folder) that is free, or ``overwrite``
    (:func:`~siammae.output_folder.check_file_free`); with ``probe``, its folder is made and a file can be created
    there."""
    for path in paths:
        check_file_free(path, overwrite)
        if not probe:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{TMP_PREFIX}write-test."):
                pass
        except OSError as e:
            raise OutputError(f"{path.parent}: cannot write there ({e.strerror or e})") from e


__all__ = ["OWNED_OUTPUTS", "RunOutputs", "check_output_files", "default_out"]
