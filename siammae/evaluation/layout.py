"""The two pieces of a benchmark's folder layout that DAVIS and VIP share: a list file of names, one per line,
and a folder of ``*.jpg`` frames with one ``<frame>.png`` annotation each."""

from __future__ import annotations

from pathlib import Path

from siammae.errors import InputError
from siammae.output_folder import check_name


def read_names(listing: Path, what: str, hint: str = "") -> list[str]:
    """The non-empty lines of ``listing``; ``what`` names it in errors, ``hint`` follows a missing-file error.
    Each line must be a plain name (it is joined to data and output folders): see :func:`check_name`."""
    if not listing.is_file():
        raise InputError(f"{what} {listing} does not exist{hint}")
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {listing}: cannot read ({e})") from e
    names = [check_name(line.strip(), f"{what} {listing}") for line in text.splitlines() if line.strip()]
    if not names:
        raise InputError(f"{what} {listing} is empty")
    return names


def annotated_frames(image_dir: Path, mask_dir: Path, what: str) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(frames, annotations): the sorted ``*.jpg`` of ``image_dir`` and their ``mask_dir/<stem>.png``, every one
    of which must exist; ``what`` names the video in errors."""
    frames = tuple(sorted(image_dir.glob("*.jpg")))
    if not frames:
        raise InputError(f"{what}: no frames (*.jpg) in {image_dir}")
    annotations = tuple(mask_dir / f"{p.stem}.png" for p in frames)
    missing = [p for p in annotations if not p.is_file()]
    if missing:
        raise InputError(
            f"{what}: frame {missing[0].stem}.jpg has no annotation {missing[0]} "
            f"({len(missing)} of {len(frames)} frames lack one)"
        )
    return frames, annotations
