"""siammae-track: track the objects of a first-frame mask, or first-frame keypoints, through a video (file or frame
folder), streamed.

    siammae-track video.mp4 --mask first.png                 # default weights; masks in video_masks/
    siammae-track video.mp4 --mask first.png --ckpt dino-vits8 --out masks/ --overlay overlay.mp4 --report run.json
    siammae-track video.mp4 --keypoints first.json --ckpt vits8.pt --out track/ --overlay overlay.mp4

A thin wrapper: parse and validate, build a :class:`~siammae.tracking.Tracker`, call
:func:`~siammae.tracking.track_video` (masks) or :func:`~siammae.tracking.track_keypoints_video` (keypoints).
Errors a user can fix print one line (``error: ...``) and exit with status 2; Ctrl-C keeps every mask (keypoint
frame) written so far, marks the report as interrupted and exits with status 130.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from siammae.cli.options import (
    CONTEXT,
    Command,
    arch_option,
    ckpt_option,
    device_option,
    dtype_option,
    errors,
    overrides,
    preset_option,
    propagation_options,
    size_option,
)
from siammae.errors import InputError


def load_frame_encoder(
    ckpt: str | None, encoder: Path | None, arch: str | None, device: str = "auto", progress: bool = True
):
    """The model of ``--ckpt`` (PyTorch weights: a name or a file; none: the default weights) or the runtime of
    ``--encoder`` (ONNX / TensorRT) on ``device``."""
    if ckpt is not None and encoder is not None:
        raise InputError("give --ckpt (PyTorch weights) or --encoder (model.onnx / model.engine), not both")
    if encoder is None:
        from siammae.model.checkpoint import load_model
        from siammae.model.weights import DEFAULT_WEIGHTS

        return load_model(ckpt or DEFAULT_WEIGHTS, arch=arch, progress=progress)
    from siammae.export.runtime import load_encoder  # the optional runtimes load only when asked for

    return load_encoder(encoder, device=device)


def default_out(video: Path, keypoints: bool) -> Path:
    """Where the outputs go when none is given (the card's ``siammae-track video.mp4 --mask first.png``):
    ``<video name>_masks/`` (``_track/`` for keypoints) in the current folder."""
    return Path(f"{Path(video).stem or 'video'}_{'track' if keypoints else 'masks'}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--mask", type=click.Path(path_type=Path), help="Mask of frame 0 (PNG: mode P ids, 0/255, RGB, 1-bit).")
@click.option(
    "--mask-dir",
    type=click.Path(path_type=Path),
    help="Masks of later frames, named like their frames, adding objects that appear there.",
)
@click.option(
    "--keypoints",
    type=click.Path(path_type=Path),
    help='Keypoints of frame 0 instead of a mask: JSON {"keypoints": [[x, y], null, ...]} or {"keypoints": '
    '{"name": [x, y], ...}}, 0-based pixels.',
)
@ckpt_option()
@arch_option()
@click.option(
    "--encoder",
    type=click.Path(path_type=Path),
    help="Exported encoder (model.onnx / model.engine) instead of --ckpt; its frame size must match --size.",
)
@preset_option("siammae-davis; siammae-jhmdb with --keypoints")
@propagation_options
@size_option()
@device_option()
@dtype_option()
@click.option("--chunk", type=click.IntRange(min=1), default=8, show_default=True, help="Frames encoded per batch.")
@click.option(
    "--backend", type=click.Choice(["auto", "triton", "torch"]), default="auto", show_default=True, help="Top-k kernel."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for one indexed PNG per frame (DAVIS palette); with --keypoints for keypoints.json (the track) "
    "and keypoints.jsonl (one line per frame, written as it goes).  [default, when no output is given: "
    "<VIDEO name>_masks/ (_track/) in the current folder]",
)
@click.option(
    "--overlay", type=click.Path(path_type=Path), help="Video of the frames with the masks or keypoints drawn (h264)."
)
@click.option("--report", type=click.Path(path_type=Path), help="JSON report (and a Markdown one beside it).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.pass_context
def main(ctx, video, mask, mask_dir, keypoints, ckpt, arch, encoder, preset, size, device, dtype, chunk, backend, out,
         overlay, report, overwrite, quiet, **opts):  # fmt: skip
    """Track the objects of a first-frame mask (--mask / --mask-dir), or first-frame keypoints (--keypoints),
    through VIDEO (a video file or a folder of frames)."""
    from siammae.data.masks import MaskResizeWarning
    from siammae.tracking.pipeline import track_keypoints_video, track_video
    from siammae.tracking.tracker import Tracker

    if keypoints is not None and (mask is not None or mask_dir is not None):
        raise click.UsageError("give either --keypoints or --mask / --mask-dir, not both")
    if keypoints is None and mask is None and mask_dir is None:
        raise click.UsageError("give what to track in frame 0: --mask (or --mask-dir) or --keypoints")
    if preset is None:
        preset = "siammae-jhmdb" if keypoints is not None else "siammae-davis"

    if out is None and overlay is None and report is None:
        out = default_out(video, keypoints is not None)
    changed = overrides(ctx, opts)
    if size is not None:
        changed["size"] = size
    kept = f"; report marked interrupted: {report}" if report is not None else ""
    what = "the keypoint track holds every frame" if keypoints is not None else "every mask written"
    with warnings.catch_warnings():
        warnings.simplefilter("always", MaskResizeWarning)  # shown as one line, whatever the filters say
        warnings.showwarning = _show_warning
        with errors(f"{what} so far is complete{kept}"):
            model = load_frame_encoder(ckpt, encoder, arch, device, progress=not quiet)
            tracker = Tracker(model, preset=preset, device=device, dtype=dtype, chunk=chunk, backend=backend,
                              **changed)  # fmt: skip
            outputs = {"out": out, "overlay": overlay, "report": report, "overwrite": overwrite, "progress": not quiet}
            if keypoints is not None:
                result = track_keypoints_video(tracker, video, keypoints, **outputs)
            else:
                result = track_video(tracker, video, mask, mask_dir=mask_dir, **outputs)
    if not quiet:
        if keypoints is not None:
            what = f"{len(result['keypoints'])} keypoints"
        else:
            what = f"objects {', '.join(str(i) for i in result['objects'])}"
        where = ", ".join(str(p) for p in (out, overlay, report) if p is not None)
        weights = result["settings"].get("weights") or {}
        used = f" with {weights['weights']} (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else ""
        click.echo(
            f"tracked {result['frames']} frames ({what}){used} in {result['time']['total_seconds']:.1f} s, "
            f"{result['fps']} frames/s -> {where}",
            err=True,
        )


if __name__ == "__main__":
    main()
