"""What a tracking run checks before its first frame (:mod:`siammae.tracking.pipeline` calls these): something to
write, the memory a batch of frames needs, an overlay format that can be written, output files that are free (or
``--overwrite``), and the claim on ``--out`` (:class:`siammae.outputs.OutputFolder`: one writer, no planted links,
``--overwrite`` leaves this run's outputs only)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from siammae.data.video import VideoSource, check_video_output
from siammae.errors import InputError
from siammae.io import TMP_PREFIX
from siammae.memory import check_encoder_fits
from siammae.outputs import OutputFolder
from siammae.tracking.report import report_paths
from siammae.tracking.tracker import Tracker

# the files a run writes at the top of --out: what --overwrite may remove there (see siammae.outputs)
OWNED_OUTPUTS = ("*.png", "keypoints.json", "keypoints.jsonl")


def _check_output_files(paths: list[Path], overwrite: bool) -> None:
    """Each path names a file (not a folder) that is free, or ``overwrite``, in a folder where files can be made."""
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected an output file name")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: output file exists (use --overwrite to replace it)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{TMP_PREFIX}write-test."):
                pass
        except OSError as e:
            raise InputError(f"{path.parent}: cannot write there ({e.strerror or e})") from e


def require_output(out, overlay, report) -> None:
    if out is None and overlay is None and report is None:
        raise InputError("nothing to write: give an output folder (--out), an overlay video or a report")


def check_outputs(out, overlay, report, overwrite: bool, tracker: Tracker, src: VideoSource, jsonl=None) -> dict:
    """Before the first frame: memory for a batch of frames, a writable overlay format, free output files; then
    claim ``out`` (:class:`~siammae.outputs.OutputFolder`, released by ``pipeline._run``, under "folder")."""
    H, W = tracker.frame_size(src.height, src.width)
    check_encoder_fits(tracker.encoder, H, W, tracker.chunk, tracker.device, f"{src.path} at {H}x{W} (height x width)")
    if overlay is not None:
        check_video_output(overlay, "--overlay")
    files = [Path(p) for p in (overlay, *report_paths(report), jsonl) if p is not None]
    check = functools.partial(_check_output_files, files, overwrite)
    folder = None
    if out is None:
        check()
    else:  # the overlay and report may sit in --out: --overwrite replaces them there too
        inside = tuple(p.name for p in files if p.absolute().parent == Path(out).absolute())
        folder = OutputFolder(out, overwrite=overwrite, exclusive=True, owned=OWNED_OUTPUTS + inside).open(check)
    outputs = {"out": out, "overlay": overlay, "report": report, "folder": folder}
    return outputs if jsonl is None else {**outputs, "jsonl": jsonl}
