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

Results go to benchmarks/results/bench_track-<device>.{json,md} with the machine, versions and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from siammae.checkpoint import save_checkpoint
from siammae.data.synthetic import iter_synthetic_clip
from siammae.data.video import open_video, write_video
from siammae.frame_encoder import resolve_device
from siammae.io import write_json, write_text
from siammae.models import create_model
from siammae.tracking.masks import write_mask

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ROOT.parent / "shared" / "data"


def environment(device: torch.device) -> dict:
    """Machine, library versions, GPU and git commit, stored next to every number."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import av

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "commit": git("rev-parse", "--short=10", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


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
    args = ap.parse_args()
    device = resolve_device(args.device)
    results = {"environment": environment(device), "settings": vars(args) | {"device": str(device)}}
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in results["settings"].items()}

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
            results["speed"] = {"clip": str(args.clip), "arch": args.arch if args.ckpt is None else str(args.ckpt),
                                **summary(r)}  # fmt: skip
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
                print(f"memory: {n} frames, peak host {runs[n]['peak_host_mib']} MiB", file=sys.stderr)
            growth = lambda key: (
                None if runs[short][key] is None else round(100 * (runs[long][key] / runs[short][key] - 1), 2)
            )
            results["memory"] = {
                "arch": args.long_arch,
                "size": args.long_size,
                "runs": {str(n): r for n, r in runs.items()},
                "host_growth_percent": growth("peak_host_mib"),
                "host_growth_mib": round(runs[long]["peak_host_mib"] - runs[short]["peak_host_mib"], 1),
                "gpu_growth_percent": growth("peak_gpu_mib"),
                "target_percent": 10,
            }

    RESULTS.mkdir(exist_ok=True)
    name = f"bench_track-{device.type}"
    write_json(RESULTS / f"{name}.json", results)
    write_text(RESULTS / f"{name}.md", to_markdown(results))
    print(to_markdown(results))


def to_markdown(res: dict) -> str:
    env, s = res["environment"], res["settings"]
    lines = [
        f"# bench_track on {s['device']}",
        "",
        f"{env['date']} | {env['machine']} | torch {env['torch']} | av {env['av']} | GPU {env['gpu']} | "
        f"commit {env['commit']}{' (dirty)' if env['dirty'] else ''}",
        "",
    ]
    if "speed" in res:
        r = res["speed"]
        st = r["stages_fps"]
        lines += [
            f"## Real clip: `{Path(r['clip']).name}`, {r['arch']} (random weights unless a checkpoint), "
            f"preset {s['preset']}, {s['dtype']}, chunk {s['chunk']}, encoded at {r['encoded_at']}",
            "",
            "| frames | end-to-end frames/s | decode | encode | propagate | write | peak host MiB | peak GPU MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['frames']} | **{r['fps']}** | {st['decode']} | {st['encode']} | {st['propagate']} | "
            f"{st['write']} | {r['peak_host_mib']} | {r['peak_gpu_mib'] or '-'} |",
            "",
            "Per-stage columns are frames/s of each stage alone; decoding and writing run in their own threads.",
            "",
        ]
    if "memory" in res:
        m = res["memory"]
        lines += [
            f"## Memory versus length: synthetic {m['size']}x{m['size']} video, {m['arch']} model, preset dino",
            "",
            "| frames | peak host MiB | peak GPU MiB | frames/s |",
            "|---:|---:|---:|---:|",
        ]
        for n, r in m["runs"].items():
            lines.append(f"| {n} | {r['peak_host_mib']} | {r['peak_gpu_mib'] or '-'} | {r['fps']} |")
        gpu = f", GPU {m['gpu_growth_percent']} %" if m["gpu_growth_percent"] is not None else ""
        lines += [
            "",
            f"Growth from {list(m['runs'])[0]} to {list(m['runs'])[-1]} frames: host **{m['host_growth_percent']} %** "
            f"({m['host_growth_mib']} MiB){gpu} (target < {m['target_percent']} %).",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
