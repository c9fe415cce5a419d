"""siammae-track: track the objects of a first-frame mask, or first-frame keypoints, through a video (file, frame
folder or live stream), streamed; or through many videos in one resumable run, over several GPUs with torchrun.

    siammae-track video.mp4 --mask first.png                 # default weights; masks in video_masks/
    siammae-track video.mp4 --mask first.png --ckpt dino-vits8 --out masks/ --overlay overlay.mp4 --report run.json
    siammae-track video.mp4 --keypoints first.json --ckpt vits8.pt --out track/ --overlay overlay.mp4
    siammae-track --manifest videos.csv --ckpt vits8.pt --out results/            # many videos
    ffmpeg ... -f mpegts - | siammae-track - --mask first.png --ckpt vits8.pt --out masks/ --realtime

A thin wrapper: parse and validate, build a :class:`~siammae.tracking.Tracker`, call
:func:`~siammae.tracking.track_video` (masks; a live source opened with :func:`~siammae.data.video.open_source`),
:func:`~siammae.tracking.track_keypoints_video` (keypoints) or :func:`~siammae.tracking.batch.run_batch` (many
videos; a batch that had failures exits with status 1 naming how many).
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
    given,
    overrides,
    preset_option,
    propagation_options,
    size_option,
)
from siammae.errors import InputError
from siammae.propagation.config import default_preset


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
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Live: stop after this many seconds.")
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
    from siammae.data.live import is_live, open_source
    from siammae.data.masks import MaskResizeWarning
    from siammae.tracking.batch import is_batch_input
    from siammae.tracking.pipeline import track_keypoints_video, track_video
    from siammae.tracking.tracker import Tracker

    live = dict(realtime=realtime, max_frames=max_frames, duration=duration)
    if manifest is not None or is_batch_input(list(videos)):
        if any(live.values()) or input_format is not None or jsonl is not None:
            raise click.UsageError("--format, --realtime, --max-frames, --duration and --jsonl are for one live source")
        return _many(ctx, list(videos), manifest, mask, mask_dir, keypoints, ckpt, arch, encoder, preset, size, device,
                     dtype, chunk, backend, out, overlay, report, overlays, overwrite, quiet, opts)  # fmt: skip
    if not videos:
        raise click.UsageError("give a VIDEO (file, frame folder, live source), several, or --manifest FILE")
    (video,) = videos
    if not is_live(video, input_format) and (any(live.values()) or input_format is not None):
        raise click.UsageError(f"--format, --realtime, --max-frames and --duration are for live sources, not {video}")
    if overlays:
        raise click.UsageError("--overlays is for many videos; give --overlay FILE for one")
    if keypoints is not None and jsonl is not None:
        raise click.UsageError("with --keypoints, --out already holds keypoints.jsonl; --jsonl is for masks")
    if realtime and not given(ctx, "chunk"):
        chunk = 1  # a chunk waits for its frames: real time tracks each frame as it comes
    if keypoints is not None and (mask is not None or mask_dir is not None):
        raise click.UsageError("give either --keypoints or --mask / --mask-dir, not both")
    if keypoints is None and mask is None and mask_dir is None:
        raise click.UsageError("give what to track in frame 0: --mask (or --mask-dir) or --keypoints")
    if preset is None:
        preset = default_preset("keypoints" if keypoints is not None else "masks")

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
            source = open_source(video, input_format, **live) if is_live(video, input_format) else video
            if keypoints is not None:
                result = track_keypoints_video(tracker, source, keypoints, **outputs)
            else:
                result = track_video(tracker, source, mask, mask_dir=mask_dir, jsonl=jsonl, **outputs)
    if not quiet:
        if keypoints is not None:
            what = f"{len(result['keypoints'])} keypoints"
        else:
            what = f"objects {', '.join(str(i) for i in result['objects'])}"
        where = ", ".join(str(p) for p in (out, overlay, report, jsonl) if p is not None)
        weights = result["settings"].get("weights") or {}
        used = f" with {weights['weights']} (sha256 {weights['sha256'][:12]})" if weights.get("sha256") else ""
        click.echo(
            f"tracked {result['frames']} frames ({what}){used} in {result['time']['total_seconds']:.1f} s, "
            f"{result['fps']} frames/s -> {where}",
            err=True,
        )


def _many(ctx, inputs, manifest, mask, mask_dir, keypoints, ckpt, arch, encoder, preset, size, device, dtype, chunk,
          backend, out, overlay, report, overlays, overwrite, quiet, opts):  # fmt: skip
    """Many videos: :func:`siammae.tracking.batch.run_batch` on this process's share (torchrun) of them."""
    from siammae.distributed import current_rank, first_on_local_rank0, init
    from siammae.tracking.batch import expand_inputs, read_manifest, run_batch
    from siammae.tracking.tracker import Tracker

    if out is None:
        raise click.UsageError("several videos need --out (one folder per video is made under it)")
    if mask is not None or overlay is not None or report is not None:
        raise click.UsageError(
            "with several videos, give masks with --mask-dir ROOT (ROOT/<video name>/) or a --manifest; overlays with "
            "--overlays; each video's report is written in its folder"
        )
    if manifest is not None and inputs:
        raise click.UsageError("give videos or --manifest, not both")
    changed = overrides(ctx, opts)
    if size is not None:
        changed["size"] = size
    rank = current_rank()
    with errors(f"finished videos are kept in {out}; run again to go on"):
        items = read_manifest(manifest) if manifest else expand_inputs(inputs, mask_dir, keypoints)
        if preset is None:
            preset = default_preset("keypoints" if all(i.keypoints for i in items) else "masks")
        init(rank)
        if encoder is None:  # weights given by name: fetched once per machine, then loaded by every rank
            from siammae.model.weights import DEFAULT_WEIGHTS, resolve_weights

            first_on_local_rank0(rank, lambda: resolve_weights(ckpt or DEFAULT_WEIGHTS, progress=not quiet))
        model = load_frame_encoder(ckpt, encoder, arch, rank.device(device))
        tracker = Tracker(model, preset=preset, device=rank.device(device), dtype=dtype, chunk=chunk, backend=backend,
                          **changed)  # fmt: skip
        summary = run_batch(tracker, items, out, rank=rank, overlay=overlays, overwrite=overwrite,
                            progress=not quiet and rank.rank == 0)  # fmt: skip
    if rank.rank != 0:
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
