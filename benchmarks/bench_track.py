"""siammae-track end to end: frames per second and peak memory on a real clip, and memory versus video length.

1. Speed: the command on a real clip (default ../shared/data/sam2/bedroom.mp4, 960x540, 200 frames) with masks,
   overlay and report written: end-to-end frames per second, per-stage rates, peak host and GPU memory.
2. Constant memory: the command on synthetic videos of 1,000 and 10,000 frames (the first is the start of the
   second). Peak host memory (VmHWM) and peak GPU memory of each run; the target is less than 10 % growth from
   1,000 to 10,000 frames, i.e. nothing accumulates per frame (SAM 2 preloads every frame and runs out of memory).

Every run is a separate process running the command itself (``python -m siammae.cli.track``), so each peak
belongs to one run; the numbers are read from the run's ``--report``. Weights are random unless ``--ckpt`` is
given: speed and memory do not depend on their values.

    python benchmarks/bench_track.py                                  # CUDA when present: vits8 at 480
    python benchmarks/bench_track.py --device cpu --arch vits16 --size 240 --clip ../shared/data/cutie/example.mp4

Results go to benchmarks/results/bench_track-<device>.{json,md} (or under ``--out``) with the machine, versions
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

    table = markdown(meta, settings, rows, growth)
    path = write_results(
        f"bench_track-{device.type}", meta, rows, table, folder=args.out, settings=settings, memory_growth=growth
    )
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)


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
