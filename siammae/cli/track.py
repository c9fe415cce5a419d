"""siammae-track: track the objects of a first-frame mask, or first-frame keypoints, through a video (file, frame
folder or live stream), streamed; or through many videos in one resumable run, over several GPUs with torchrun.

    siammae-track video.mp4 --mask first.png                 # default weights; masks in video_masks/
    siammae-track video.mp4 --mask first.png --ckpt dino-vits8 --out masks/ --overlay overlay.mp4 --report run.json
    siammae-track video.mp4 --keypoints first.json --ckpt vits8.pt --out track/ --overlay overlay.mp4
    siammae-track --manifest videos.csv --ckpt vits8.pt --out results/            # many videos
    ffmpeg ... -f mpegts - | siammae-track - --mask first.png --ckpt vits8.pt --out masks/ --realtime

A thin wrapper: parse, then one library call, :meth:`siammae.tracking.job.TrackJob.run`, which first checks every
argument that can be checked without torch or a model (so a missing file or a non-empty --out fails in well under
a second) and holds every policy (default weights, fetched once per machine; real time tracks frame by frame; the
default output folder), so that Python callers get what the command does.
Errors a user can fix print one line (``error: ...``) and exit with status 2; Ctrl-C keeps every mask (keypoint
frame) written so far, marks the report as interrupted and exits with status 130. A batch that had failures exits
with status 1 naming how many.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import click

from siammae.cli.options import (
    CONTEXT,
    Command,
    Finite,
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
from siammae.propagation.config import default_preset


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


@click.command(cls=Command, context_settings=CONTEXT)
@click.argument("videos", nargs=-1, metavar="VIDEO...")
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="Many videos: a CSV (header row) or JSON Lines file with columns video, mask / mask_dir / keypoints, out.",
)
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
@preset_option(f"{default_preset('masks')}; {default_preset('keypoints')} with --keypoints")
@propagation_options
@size_option()
@device_option()
@dtype_option()
@click.option("--chunk", type=click.IntRange(min=1), help="Frames encoded per batch.  [default: 8; 1 with --realtime]")
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
@click.option(
    "--jsonl",
    type=click.Path(path_type=Path),
    help="One JSON line per frame (index, time stamp, area and box per object), flushed as it goes.",
)
@click.option("--overlays", is_flag=True, help="Many videos: an overlay.mp4 in each video's folder.")
@click.option(
    "--format", "input_format", help="Live: FFmpeg input format (v4l2, avfoundation, dshow for cameras; mpegts, ...)."
)
@click.option("--realtime", is_flag=True, help="Live: drop frames at the input when slower than the source.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Live: stop after this many frames.")
@click.option("--duration", type=Finite(min=0, min_open=True), help="Live: stop after this many seconds.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.pass_context
def main(ctx, videos, manifest, mask, mask_dir, keypoints, ckpt, arch, encoder, preset, size, device, dtype, chunk,
         backend, out, overlay, report, jsonl, overlays, input_format, realtime, max_frames, duration, overwrite, quiet,
         **opts):  # fmt: skip
    """Track the objects of a first-frame mask (--mask / --mask-dir), or first-frame keypoints (--keypoints),
    through VIDEO: a video file, a folder of frames, or a live source (- for standard input, an rtsp:// /
    http(s):// / udp:// / srt:// URL, a camera such as /dev/video0).

    Several VIDEOs, a folder of videos or --manifest track many videos in one resumable run, one folder each under
    --out (masks/, report.json), with --mask-dir ROOT (ROOT/<video name>/ per video) or --keypoints ROOT
    (ROOT/<video name>.json) and a summary.json / summary.md; under torchrun the videos are shared out over the
    processes."""
    from siammae.allocator import tune_cpu_allocator
    from siammae.data.masks import MaskResizeWarning
    from siammae.tracking.job import TrackJob

    tune_cpu_allocator()  # the process's malloc, once, here (README: SIAMMAE_NO_MALLOC_TUNING=1 leaves it alone)
    changed = overrides(ctx, opts)
    job = TrackJob(videos=tuple(videos), manifest=manifest, mask=mask, mask_dir=mask_dir, keypoints=keypoints,
                   ckpt=ckpt, arch=arch, encoder=encoder, preset=preset, overrides=changed, size=size, device=device,
                   dtype=dtype, chunk=chunk, backend=backend, out=out, overlay=overlay, report=report, jsonl=jsonl,
                   overlays=overlays, format=input_format, realtime=realtime, max_frames=max_frames,
                   duration=duration, overwrite=overwrite, progress=not quiet)  # fmt: skip
    try:
        batch = job.batch
    except OSError as e:
        raise click.UsageError(f"cannot read {videos[0]}: {e.strerror or e}") from e
    if batch:
        interrupted = f"finished videos are kept in {out}; run again to go on"
    else:
        what = "the keypoint track holds every frame" if keypoints is not None else "every mask written"
        interrupted = f"{what} so far is complete" + (f"; report marked interrupted: {report}" if report else "")
    with warnings.catch_warnings():
        warnings.simplefilter("always", MaskResizeWarning)  # shown as one line, whatever the filters say
        warnings.showwarning = _show_warning
        with errors(interrupted):
            result = job.run()
    if batch:
        _batch_done(result, out, quiet)
    elif not quiet:
        _single_done(result, job)


def _single_done(report, job) -> None:
    """One line about a finished run (``report``: its :class:`~siammae.tracking.report.RunReport`)."""
    if report.keypoints is not None:
        what = f"{len(report.keypoints)} keypoints"
    else:
        what = f"objects {', '.join(str(i) for i in report.objects)}"
    where = ", ".join(str(p) for p in dataclasses.astuple(job.outputs()) if p is not None)
    weights = report.weights or {}
    used = f" with {weights['weights']} (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else ""
    click.echo(
        f"tracked {report.frames} frames ({what}){used} in {report.time.total_seconds:.1f} s, "
        f"{report.fps} frames/s -> {where}",
        err=True,
    )


def _batch_done(summary: dict, out, quiet: bool) -> None:
    from siammae.torchrun import current_rank

    if current_rank().rank != 0:
        sys.exit(1 if summary["failed"] else 0)
    if not quiet:
        click.echo(
            f"{summary['videos']} videos: {summary['complete']} done, {summary['skipped']} already done, "
            f"{summary['failed']} failed; {summary['frames']} frames at {summary['frames_per_second']} frames/s "
            f"-> {out}/summary.md",
            err=True,
        )
    if summary["failed"]:
        click.echo(f"error: {summary['failed']} of {summary['videos']} videos failed (see {out}/summary.md)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
