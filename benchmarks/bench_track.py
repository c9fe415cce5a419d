"""siammae-track end to end: frames per second and peak memory on a real clip, and memory versus video length.

1. Speed: the command on a real clip (default ../shared/data/sam2/bedroom.mp4, 960x540, 200 frames) with masks,
   overlay and report written: end-to-end frames per second, per-stage rates, peak host and GPU memory.
2. Constant memory: the command on synthetic videos of 1,000 and 10,000 frames (the first is the start of the
   second). Peak host memory (VmHWM) and peak GPU memory of each run; the target is less than 10 % growth from
   1,000 to 10,000 frames, i.e. nothing accumulates per frame (SAM 2 preloads every frame and runs out of memory).

3. Many videos: ``--batch N`` synthetic videos in one ``siammae-track --manifest`` run (one model load): videos/s
   and frames/s from its ``summary.json``, against the same videos as N separate commands.
4. Live: a writer process sends a synthetic clip as MPEG-TS at ``--live-fps`` into ``siammae-track -`` through a
   pipe, with and without ``--realtime``: frame latency (arrival -> mask written) median and p95, frames dropped.

Every run is a separate process running the command itself (``python -m siammae.cli.track``), so each peak
belongs to one run; the numbers are read from the run's ``--report``. Weights are random unless ``--ckpt`` is
given: speed and memory do not depend on their values.

    python benchmarks/bench_track.py                                  # CUDA when present: vits8 at 480
    python benchmarks/bench_track.py --device cpu --arch vits16 --size 240 --clip ../shared/data/cutie/example.mp4

Results go to benchmarks/results/bench_track-<device>.{json,md} (1 and 2) and bench_track_many-<device>.{json,md}
(3 and 4; ``--skip-speed --skip-memory`` runs only those) (or under ``--out``) with the machine, versions
and commit: one row per run of the command, and the memory growth from the short to the long video.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import RESULTS, environment, environment_markdown, write_results  # noqa: E402
from siammae.data.masks import write_mask  # noqa: E402
from siammae.data.synthetic import iter_synthetic_clip  # noqa: E402
from siammae.data.video import open_video, write_video  # noqa: E402
from siammae.device import resolve_device  # noqa: E402
from siammae.model.checkpoint import save_checkpoint  # noqa: E402
from siammae.model.registry import create_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def track(video: Path, mask: Path, ckpt: Path, out: Path, args, size: int, preset: str, overlay: bool) -> dict:
    """Run siammae-track in its own process; return its report."""
    report = out / "report.json"
    cmd = [sys.executable, "-m", "siammae.cli.track", str(video), "--mask", str(mask), "--ckpt", str(ckpt),
           "--size", str(size), "--preset", preset, "--device", args.device, "--dtype", args.dtype,
           "--chunk", str(args.chunk), "--out", str(out / "masks"), "--report", str(report), "--quiet"]  # fmt: skip
    if overlay:
        cmd += ["--overlay", str(out / "overlay.mp4")]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"siammae-track failed ({proc.returncode}): {proc.stderr.strip()}")
    result = json.loads(report.read_text())
    result["process_wall_seconds"] = round(wall, 2)  # including start-up and model loading
    return result


def first_frame_mask(video: Path) -> np.ndarray:
    """A mask for a clip without annotations: an ellipse in the middle third of frame 0 (speed does not depend on
    what is tracked, only on the number of objects)."""
    src = open_video(video)
    H, W = src.height, src.width
    yy, xx = np.mgrid[0:H, 0:W]
    ids = np.zeros((H, W), np.uint8)
    ids[((yy - H / 2) / (H / 6)) ** 2 + ((xx - W / 2) / (W / 6)) ** 2 <= 1] = 1
    ids[((yy - H / 4) / (H / 10)) ** 2 + ((xx - W / 5) / (W / 10)) ** 2 <= 1] = 2
    return ids


def summary(r: dict) -> dict:
    return {
        "frames": r["frames"],
        "fps": r["fps"],
        "stages_fps": {k: v["fps"] for k, v in r["time"]["stages"].items()},
        "peak_host_mib": r["memory"]["peak_host_mib"],
        "peak_gpu_mib": r["memory"]["peak_gpu_mib"],
        "encoded_at": f"{r['processing']['width']}x{r['processing']['height']}",
        "seconds": r["time"]["total_seconds"],
        "process_wall_seconds": r["process_wall_seconds"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", type=Path, default=SHARED / "sam2" / "bedroom.mp4")
    ap.add_argument("--ckpt", type=Path, help="weights to use (default: random weights of --arch)")
    ap.add_argument("--arch", default="vits8")
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--preset", default="siammae-davis")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--long-frames", type=int, nargs=2, default=(1000, 10000), metavar=("SHORT", "LONG"))
    ap.add_argument("--long-size", type=int, default=128, help="frame size of the synthetic videos")
    ap.add_argument("--long-arch", default="tiny", help="model for the long runs (memory only)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--batch", type=int, default=8, help="videos in the batch case")
    ap.add_argument("--batch-frames", type=int, default=40, help="frames per video in the batch case")
    ap.add_argument("--live-frames", type=int, default=150, help="frames the live writer sends")
    ap.add_argument("--live-fps", type=float, default=25.0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args()
    device = resolve_device(args.device)
    meta = environment()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    settings["device"] = str(device)
    rows, growth = [], None

    with tempfile.TemporaryDirectory(prefix="bench_track.") as tmp:
        tmp = Path(tmp)
        if not args.skip_speed:
            ckpt = args.ckpt
            if ckpt is None:
                ckpt = tmp / f"{args.arch}.pt"
                save_checkpoint(ckpt, create_model(args.arch).encoder)
            mask = tmp / "mask.png"
            write_mask(mask, first_frame_mask(args.clip))
            r = track(args.clip, mask, ckpt, tmp / "speed", args, args.size, args.preset, overlay=True)
            arch = args.arch if args.ckpt is None else str(args.ckpt)
            rows.append({"case": "speed", "video": str(args.clip), "arch": arch, "preset": args.preset, **summary(r)})
            print(f"speed: {r['frames']} frames, {r['fps']} frames/s end to end", file=sys.stderr)

        if not args.skip_memory:
            short, long = args.long_frames
            ckpt = tmp / f"{args.long_arch}.pt"
            save_checkpoint(ckpt, create_model(args.long_arch).encoder)
            frames = lambda n: (f for f, _ in iter_synthetic_clip(n, args.long_size, seed=0))
            mask = tmp / "first.png"
            write_mask(mask, next(iter_synthetic_clip(1, args.long_size, seed=0))[1])
            runs = {}
            for n in (short, long):
                video = tmp / f"synthetic_{n}.mp4"
                write_video(video, frames(n), fps=25)
                runs[n] = summary(
                    track(video, mask, ckpt, tmp / f"long_{n}", args, args.long_size, "dino", overlay=False)
                )
                video.unlink()
                video_name = f"synthetic {args.long_size}x{args.long_size}"
                rows.append(
                    {"case": "memory", "video": video_name, "arch": args.long_arch, "preset": "dino", **runs[n]}
                )
                print(f"memory: {n} frames, peak host {runs[n]['peak_host_mib']} MiB", file=sys.stderr)
            percent = lambda key: (
                None if runs[short][key] is None else round(100 * (runs[long][key] / runs[short][key] - 1), 2)
            )
            growth = {
                "frames": [short, long],
                "host_growth_percent": percent("peak_host_mib"),
                "host_growth_mib": round(runs[long]["peak_host_mib"] - runs[short]["peak_host_mib"], 1),
                "gpu_growth_percent": percent("peak_gpu_mib"),
                "target_percent": 10,
            }

    if not (args.skip_batch and args.skip_live):
        many(args, meta, settings)
    if args.skip_speed and args.skip_memory:
        return
    table = markdown(meta, settings, rows, growth)
    path = write_results(
        f"bench_track-{device.type}", meta, rows, table, folder=args.out, settings=settings, memory_growth=growth
    )
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "siammae.cli.track", *[str(a) for a in args]]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def many(args, meta: dict, settings: dict) -> None:
    """Cases 3 and 4 (module docstring), written to bench_track_many-<device>."""
    rows = []
    common = ["--size", args.long_size, "--preset", "dino", "--device", args.device, "--chunk", args.chunk, "--quiet"]
    with tempfile.TemporaryDirectory(prefix="bench_track_many.") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / f"{args.long_arch}.pt"
        save_checkpoint(ckpt, create_model(args.long_arch).encoder)
        if not args.skip_batch:
            lines = ["video,mask"]
            for k in range(args.batch):
                clip = list(iter_synthetic_clip(args.batch_frames, args.long_size, seed=k))
                write_video(tmp / f"v{k}.mp4", (f for f, _ in clip), fps=25)
                write_mask(tmp / f"m{k}.png", clip[0][1])
                lines.append(f"v{k}.mp4,m{k}.png")
            (tmp / "videos.csv").write_text("\n".join(lines) + "\n")
            t0 = time.perf_counter()
            subprocess.run(_cli("--manifest", tmp / "videos.csv", "--out", tmp / "batch", "--ckpt", ckpt, *common),
                           env=_env(), check=True)  # fmt: skip
            batch_wall = time.perf_counter() - t0
            s = json.loads((tmp / "batch" / "summary.json").read_text())
            t0 = time.perf_counter()
            for k in range(args.batch):  # the same videos, one command each (a model load and start-up each)
                subprocess.run(_cli(tmp / f"v{k}.mp4", "--mask", tmp / f"m{k}.png", "--out", tmp / "one" / str(k),
                                    "--ckpt", ckpt, *common), env=_env(), check=True)  # fmt: skip
            separate = time.perf_counter() - t0
            n_frames = args.batch * args.batch_frames
            rows.append({"case": "batch", "videos": args.batch, "frames": s["frames"], "complete": s["complete"],
                         "videos_per_second": s["videos_per_second"], "frames_per_second": s["frames_per_second"],
                         "process_wall_seconds": round(batch_wall, 2),
                         "separate_commands_wall_seconds": round(separate, 2),
                         "separate_videos_per_second": round(args.batch / separate, 3),
                         "separate_frames_per_second": round(n_frames / separate, 2)})  # fmt: skip
            print(f"batch: {rows[-1]}", file=sys.stderr)
        if not args.skip_live:
            clip = [f for f, _ in iter_synthetic_clip(args.live_frames, args.long_size, seed=0)]
            np.save(tmp / "live.npy", np.stack(clip))
            write_mask(tmp / "first.png", next(iter_synthetic_clip(1, args.long_size, seed=0))[1])
            for realtime in (False, True):
                out = tmp / f"live_{realtime}"
                ready = out / "masks" / "00000.png"
                writer = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER, str(tmp / "live.npy"),
                                           str(args.live_fps), str(ready)], stdout=subprocess.PIPE)  # fmt: skip
                cmd = _cli("-", "--mask", tmp / "first.png", "--ckpt", ckpt, "--out", out / "masks", "--report",
                           out / "report.json", *common, *(["--realtime"] if realtime else []))  # fmt: skip
                with writer:
                    subprocess.run(cmd, stdin=writer.stdout, env=_env(), check=True)
                r = json.loads((out / "report.json").read_text())
                rows.append({"case": "live", "realtime": realtime, "source_fps": args.live_fps,
                             "frames_sent": args.live_frames, "frames": r["frames"],
                             "dropped": r.get("dropped", {}).get("frames", 0), "fps": r["fps"],
                             "latency_median_ms": r["latency"]["median_ms"], "latency_p95_ms": r["latency"]["p95_ms"],
                             "latency_max_ms": r["latency"]["max_ms"]})  # fmt: skip
                print(f"live: {rows[-1]}", file=sys.stderr)
    table = many_markdown(meta, settings, rows)
    path = write_results(f"bench_track_many-{settings['device'].split(':')[0]}", meta, rows, table, folder=args.out,
                         settings=settings)  # fmt: skip
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


# sends the frames of an .npy file as MPEG-TS to stdout at a given rate, as a camera or an encoder in a pipe would.
# Frames 0-2 go at once (the tracker needs them to open the stream; the demuxer passes a frame on when the next one
# starts); the clock of the rest starts when the tracker has written frame 0's mask (argv[3]), so that start-up and
# the first, slow call of the model are not in the numbers.
_LIVE_WRITER = """
import os, sys, time, av, numpy as np
frames, fps, ready = np.load(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with av.open(sys.stdout.buffer, "w", format="mpegts", options={"flush_packets": "1"}) as c:
    s = c.add_stream("mpeg2video", rate=int(fps)); s.height, s.width = frames.shape[1:3]; s.pix_fmt = "yuv420p"
    for i, f in enumerate(frames):
        if i == 3:
            deadline = time.perf_counter() + 300
            while not os.path.exists(ready) and time.perf_counter() < deadline:
                time.sleep(0.01)
            t0 = time.perf_counter()
        if i >= 3:
            time.sleep(max(0.0, t0 + (i - 3) / fps - time.perf_counter()))
        for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            c.mux(p)
        sys.stdout.buffer.flush()
    for p in s.encode():
        c.mux(p)
"""


def many_markdown(meta: dict, s: dict, rows: list[dict]) -> str:
    lines = [f"# bench_track: many videos and live sources on {s['device']}", "", environment_markdown(meta), ""]
    batch = [r for r in rows if r["case"] == "batch"]
    for r in batch:
        lines += [
            f"## A batch of {r['videos']} synthetic videos ({s['long_size']}x{s['long_size']}, {s['batch_frames']} "
            f"frames each), {s['long_arch']} model, one `--manifest` run",
            "",
            "| run | videos/s | frames/s | wall s |",
            "|---|---:|---:|---:|",
            f"| one `siammae-track --manifest` (model loaded once) | **{r['videos_per_second']}** | "
            f"**{r['frames_per_second']}** | {r['process_wall_seconds']} |",
            f"| {r['videos']} separate commands | {r['separate_videos_per_second']} | "
            f"{r['separate_frames_per_second']} | {r['separate_commands_wall_seconds']} |",
            "",
            "The batch's rates are over its tracking time (summary.json); its wall time adds start-up and the model "
            "load once.",
            "",
        ]
    live = [r for r in rows if r["case"] == "live"]
    if live:
        lines += [
            f"## Live: MPEG-TS through a pipe at {live[0]['source_fps']} frames/s ({live[0]['frames_sent']} frames), "
            f"`siammae-track -`",
            "",
            "| mode | frames tracked | dropped | frames/s | latency median ms | p95 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in live:
            mode = "`--realtime`" if r["realtime"] else "every frame"
            lines.append(f"| {mode} | {r['frames']} | {r['dropped']} | {r['fps']} | {r['latency_median_ms']} | "
                         f"{r['latency_p95_ms']} | {r['latency_max_ms']} |")  # fmt: skip
        lines += [
            "",
            "Latency: from the frame's arrival (decoded from the pipe) to its mask written. Without `--realtime` a "
            "slow tracker holds the pipe back, so frames wait in the pipe before they arrive.",
            "",
        ]
    return "\n".join(lines)


def markdown(meta: dict, s: dict, rows: list[dict], growth: dict | None) -> str:
    """The speed table, the memory-versus-length table and the growth; ``s`` is the settings record."""
    lines = [f"# bench_track on {s['device']}", "", environment_markdown(meta), ""]
    for r in (r for r in rows if r["case"] == "speed"):
        st = r["stages_fps"]
        lines += [
            f"## Real clip: `{Path(r['video']).name}`, {r['arch']} (random weights unless a checkpoint), "
            f"preset {r['preset']}, {s['dtype']}, chunk {s['chunk']}, encoded at {r['encoded_at']}",
            "",
            "| frames | end-to-end frames/s | decode | encode | propagate | write | peak host MiB | peak GPU MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['frames']} | **{r['fps']}** | {st['decode']} | {st['encode']} | {st['propagate']} | "
            f"{st['write']} | {r['peak_host_mib']} | {r['peak_gpu_mib'] or '-'} |",
            "",
            "Per-stage columns are frames/s of each stage alone; decoding and writing run in their own threads.",
            "",
        ]
    memory = [r for r in rows if r["case"] == "memory"]
    if memory:
        lines += [
            f"## Memory versus length: {memory[0]['video']} video, {memory[0]['arch']} model, preset dino",
            "",
            "| frames | peak host MiB | peak GPU MiB | frames/s |",
            "|---:|---:|---:|---:|",
        ]
        for r in memory:
            lines.append(f"| {r['frames']} | {r['peak_host_mib']} | {r['peak_gpu_mib'] or '-'} | {r['fps']} |")
        short, long = growth["frames"]
        gpu = f", GPU {growth['gpu_growth_percent']} %" if growth["gpu_growth_percent"] is not None else ""
        lines += [
            "",
            f"Growth from {short} to {long} frames: host **{growth['host_growth_percent']} %** "
            f"({growth['host_growth_mib']} MiB){gpu} (target < {growth['target_percent']} %).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
